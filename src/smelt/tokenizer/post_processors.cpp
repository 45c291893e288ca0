// Post-processor components (post_processors.h).
#include "smelt/tokenizer/post_processors.h"

#include <map>

namespace smelt::tok {
namespace {

// A single-sequence template: special pieces around "$A" (the pair template is parsed and
// checked but smelt encodes single sequences only).
class Template : public PostProcessor {
 public:
  struct Item {
    bool sequence = false;
    SpecialPiece special;
  };
  explicit Template(std::vector<Item> items) : items_(std::move(items)) {}
  void process(Encoding& encoding) const override {
    Encoding out;
    for (const Item& item : items_) {
      if (item.sequence) {
        out.ids.insert(out.ids.end(), encoding.ids.begin(), encoding.ids.end());
        for (auto& t : encoding.tokens) out.tokens.push_back(std::move(t));
      } else {
        out.ids.insert(out.ids.end(), item.special.ids.begin(), item.special.ids.end());
        out.tokens.insert(out.tokens.end(), item.special.tokens.begin(), item.special.tokens.end());
      }
    }
    encoding = std::move(out);
  }
  size_t added_tokens() const override {
    size_t n = 0;
    for (const Item& item : items_) n += item.special.ids.size();
    return n;
  }

 private:
  std::vector<Item> items_;
};

class Sequence : public PostProcessor {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PostProcessor>> parts) : parts_(std::move(parts)) {}
  void process(Encoding& encoding) const override {
    for (const auto& p : parts_) p->process(encoding);
  }
  size_t added_tokens() const override {
    size_t n = 0;
    for (const auto& p : parts_) n += p->added_tokens();
    return n;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

// Reads a template ("single" or "pair") as a list of {"SpecialToken": {"id": ...}} and
// {"Sequence": {"id": "A"|"B"}} items, or as the string form "[CLS] $A [SEP]".
std::vector<Template::Item> read_template(const Json& value, const Where& w,
                                          const std::map<std::string, SpecialPiece>& specials,
                                          const Where& specials_where) {
  std::vector<Template::Item> items;
  auto special = [&](const std::string& id, const Where& at) {
    auto it = specials.find(id);
    if (it == specials.end()) {
      at.fail("template names special token \"" + id + "\", which " + specials_where.path +
              " does not define");
    }
    Template::Item item;
    item.special = it->second;
    items.push_back(std::move(item));
  };
  if (value.is_string()) {
    std::string s = value.get<std::string>();
    size_t pos = 0;
    while (pos < s.size()) {
      size_t end = s.find(' ', pos);
      if (end == std::string::npos) end = s.size();
      std::string word = s.substr(pos, end - pos);
      pos = end + 1;
      if (word.empty()) continue;
      std::string name = word.substr(0, word.find(':'));
      if (name == "$A" || name == "$" || name == "$0") {
        items.push_back({true, {}});
      } else if (name == "$B" || name == "$1") {
        continue;  // the second sequence of a pair
      } else {
        special(name, w);
      }
    }
    return items;
  }
  expect_array(value, w);
  for (size_t i = 0; i < value.size(); ++i) {
    Where at = w.at(i);
    const Json& piece = expect_object(value[i], at);
    if (piece.contains("Sequence")) {
      std::string id = required_string(piece["Sequence"], "id", at.at("Sequence"));
      if (id == "A") {
        items.push_back({true, {}});
      } else if (id != "B") {
        at.at("Sequence").at("id").fail("expected \"A\" or \"B\", got \"" + id + "\"");
      }
    } else if (piece.contains("SpecialToken")) {
      special(required_string(piece["SpecialToken"], "id", at.at("SpecialToken")),
              at.at("SpecialToken").at("id"));
    } else {
      at.fail("expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
    }
  }
  return items;
}

std::unique_ptr<PostProcessor> make_template(const Json& value, const Where& w) {
  std::map<std::string, SpecialPiece> specials;
  Where sw = w.at("special_tokens");
  if (value.contains("special_tokens") && !value["special_tokens"].is_null()) {
    const Json& obj = expect_object(value["special_tokens"], sw);
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      Where at = sw.at(it.key());
      const Json& ids = expect_array(required(it.value(), "ids", at), at.at("ids"));
      const Json& tokens = expect_array(required(it.value(), "tokens", at), at.at("tokens"));
      if (ids.size() != tokens.size()) at.fail("\"ids\" and \"tokens\" differ in length");
      SpecialPiece piece;
      for (size_t i = 0; i < ids.size(); ++i) {
        piece.ids.push_back(
            static_cast<int32_t>(expect_int(ids[i], at.at("ids").at(i), 0, INT32_MAX)));
        piece.tokens.push_back(expect_string(tokens[i], at.at("tokens").at(i)));
      }
      specials[it.key()] = std::move(piece);
    }
  }
  auto single = read_template(required(value, "single", w), w.at("single"), specials, sw);
  if (value.contains("pair") && !value["pair"].is_null()) {
    read_template(value["pair"], w.at("pair"), specials, sw);  // checked, not used
  }
  return std::make_unique<Template>(std::move(single));
}

// BertProcessing / RobertaProcessing: cls $A sep.
std::unique_ptr<PostProcessor> make_cls_sep(const Json& value, const Where& w) {
  auto read = [&](const char* key) {
    Where at = w.at(key);
    const Json& pair = expect_array(required(value, key, w), at);
    if (pair.size() != 2) at.fail("expected [token, id]");
    SpecialPiece piece;
    piece.tokens.push_back(expect_string(pair[0], at.at(0)));
    piece.ids.push_back(static_cast<int32_t>(expect_int(pair[1], at.at(1), 0, INT32_MAX)));
    return piece;
  };
  return make_wrap_processor(read("cls"), read("sep"));
}

}  // namespace

std::unique_ptr<PostProcessor> make_wrap_processor(SpecialPiece before, SpecialPiece after) {
  std::vector<Template::Item> items;
  if (!before.ids.empty()) items.push_back({false, std::move(before)});
  items.push_back({true, {}});
  if (!after.ids.empty()) items.push_back({false, std::move(after)});
  return std::make_unique<Template>(std::move(items));
}

std::unique_ptr<PostProcessor> make_post_processor(const Json& value, const Where& w) {
  if (value.is_null()) return nullptr;
  expect_object(value, w);
  w.check_depth();
  std::string type = required_string(value, "type", w);
  if (type == "TemplateProcessing") return make_template(value, w);
  if (type == "BertProcessing" || type == "RobertaProcessing") return make_cls_sep(value, w);
  if (type == "ByteLevel") return nullptr;  // offsets only; ids are unchanged
  if (type == "Sequence") {
    Where pw = w.at("processors");
    const Json& list = expect_array(required(value, "processors", w), pw);
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      if (auto p = make_post_processor(list[i], pw.at(i))) parts.push_back(std::move(p));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  w.at("type").fail("unknown post-processor type \"" + type +
                    "\" (smelt supports TemplateProcessing, BertProcessing, RobertaProcessing, "
                    "ByteLevel, Sequence)");
}

}  // namespace smelt::tok
