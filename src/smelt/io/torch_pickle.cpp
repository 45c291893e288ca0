// The allow-list pickle machine for PyTorch state dicts (docs/pytorch.md, "What is read"): values
// live in an arena owned by one parse, so memo sharing and self-references cost nothing and free
// nothing twice; nothing from the pickle is ever imported, called or executed.
#include "smelt/io/torch_pickle.h"

#include <fmt/ranges.h>

#include <bit>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <unordered_map>

namespace smelt::io {
namespace {

// The callables and classes a state dict may name (GLOBAL / STACK_GLOBAL); everything else is
// refused at the opcode that names it.
enum class Global : uint8_t {
  kOrderedDict,
  kRebuildTensorV2,
  kRebuildTensor,
  kRebuildParameter,
  kRebuildParameterWithState,
  kRebuildFromTypeV2,
  kParameter,
  kTensorClass,
  kSize,
  kStorageClass,
};

struct StorageClass {
  std::string_view name;
  DType dtype;
};

// torch.<X>Storage -> element type (docs/pytorch.md lists them).
constexpr StorageClass kStorageClasses[] = {
    {"FloatStorage", DType::kF32},
    {"DoubleStorage", DType::kF64},
    {"HalfStorage", DType::kF16},
    {"BFloat16Storage", DType::kBF16},
    {"LongStorage", DType::kI64},
    {"IntStorage", DType::kI32},
    {"ShortStorage", DType::kI16},
    {"CharStorage", DType::kI8},
    {"ByteStorage", DType::kU8},
    {"BoolStorage", DType::kBool},
    {"ComplexFloatStorage", DType::kC64},
    {"UntypedStorage", DType::kU8},
    {"Float8_e4m3fnStorage", DType::kF8_E4M3},
    {"Float8_e5m2Storage", DType::kF8_E5M2},
    {"Float8_e4m3fnuzStorage", DType::kF8_E4M3FNUZ},
    {"Float8_e5m2fnuzStorage", DType::kF8_E5M2FNUZ},
    {"UInt16Storage", DType::kU16},
    {"UInt32Storage", DType::kU32},
    {"UInt64Storage", DType::kU64},
};

struct Value {
  enum Kind : uint8_t {
    kNone,
    kBool,
    kInt,
    kFloat,
    kStr,
    kBytes,
    kTuple,
    kList,
    kDict,
    kGlobal,
    kStorage,
    kTensor,
  };
  Kind kind = kNone;
  bool big = false;  // kInt: does not fit int64 (raw little-endian bytes in `s`)
  Global global{};
  DType dtype = DType::kU8;  // kGlobal storage class, kStorage, kTensor
  int64_t i = 0;
  double f = 0;
  std::string s;              // kStr / kBytes; kGlobal: "module.name"; kStorage: key
  std::vector<Value*> items;  // kTuple / kList; kDict: key, value, key, value...
  // kStorage: element count and (legacy) view offset; kTensor: its descriptor.
  uint64_t numel = 0;
  uint64_t view_offset = 0;
  const Value* storage = nullptr;
  uint64_t offset = 0;
  std::vector<uint64_t> shape, stride;
};

std::string_view kind_name(const Value* v) {
  switch (v->kind) {
    case Value::kNone:
      return "None";
    case Value::kBool:
      return "a bool";
    case Value::kInt:
      return "an int";
    case Value::kFloat:
      return "a float";
    case Value::kStr:
      return "a str";
    case Value::kBytes:
      return "bytes";
    case Value::kTuple:
      return "a tuple";
    case Value::kList:
      return "a list";
    case Value::kDict:
      return "a dict";
    case Value::kGlobal:
      return "a class or function";
    case Value::kStorage:
      return "a storage";
    case Value::kTensor:
      return "a tensor";
  }
  return "a value";
}

// Printable form of text from the file, for messages.
std::string shown(std::string_view text) {
  std::string s;
  for (unsigned char c : text.substr(0, 120)) {
    if (c >= 0x20 && c < 0x7f) {
      s += static_cast<char>(c);
    } else {
      s += fmt::format("\\x{:02x}", c);
    }
  }
  if (text.size() > 120) s += "...";
  return s;
}

enum class Flavor { kZip, kLegacy, kPlain };

class Machine {
 public:
  Machine(std::string_view data, const std::string& label, uint64_t base, Flavor flavor)
      : data_(data), label_(label), base_(base), flavor_(flavor) {}

  // Runs from byte `pos` to STOP; returns the result and sets *end past STOP.
  Value* run(size_t pos, size_t* end);

 private:
  [[noreturn]] void bad(const std::string& what) const {
    fail("{}: pickle byte {}: {}", label_, base_ + op_at_, what);
  }
  Value* make(Value::Kind kind) {
    if (arena_.size() >= kMaxPickleObjects) {
      bad(fmt::format("more than {} objects; not a state dict smelt can read", kMaxPickleObjects));
    }
    arena_.push_back(std::make_unique<Value>());
    arena_.back()->kind = kind;
    return arena_.back().get();
  }
  const unsigned char* take(size_t n) {
    if (n > data_.size() - pos_) {
      throw PickleTruncated(fmt::format(
          "{}: pickle byte {}: the stream ends in the middle of an opcode (file truncated?)",
          label_, base_ + op_at_));
    }
    const auto* p = reinterpret_cast<const unsigned char*>(data_.data()) + pos_;
    pos_ += n;
    return p;
  }
  uint64_t take_le(size_t n) {
    const unsigned char* p = take(n);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(p[k]) << (8 * k);
    return v;
  }
  std::string_view take_line() {
    const size_t nl = data_.find('\n', pos_);
    if (nl == std::string_view::npos) take(data_.size() - pos_ + 1);  // throws truncated
    std::string_view line = data_.substr(pos_, nl - pos_);
    pos_ = nl + 1;
    return line;
  }
  void push(Value* v) {
    if (stack_.size() >= kMaxPickleStack) {
      bad(fmt::format("stack deeper than {} entries", kMaxPickleStack));
    }
    stack_.push_back(v);
  }
  Value* pop() {
    if (stack_.size() <= floor()) bad("pops from an empty stack");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    if (stack_.size() <= floor()) bad("reads an empty stack");
    return stack_.back();
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  // Pops everything above the last MARK, and the mark.
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) bad("needs a MARK but there is none");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Value*> items(stack_.begin() + static_cast<ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  Value* str(Value::Kind kind, size_t n) {
    const unsigned char* p = take(n);
    Value* v = make(kind);
    v->s.assign(reinterpret_cast<const char*>(p), n);
    return v;
  }
  Value* tuple(std::vector<Value*> items) {
    Value* v = make(Value::kTuple);
    v->items = std::move(items);
    return v;
  }
  void memo_put(uint64_t index) {
    Value* v = top();
    if (!memo_.count(index) && memo_.size() >= kMaxPickleMemo) {
      bad(fmt::format("memo holds more than {} entries", kMaxPickleMemo));
    }
    memo_[index] = v;
  }
  void memo_get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) bad(fmt::format("memo index {} was never stored", index));
    push(it->second);
  }
  void set_items(Value* dict, const std::vector<Value*>& kv) {
    if (dict->kind != Value::kDict) {
      bad(fmt::format("SETITEM(S) on {}, which is not a dict", kind_name(dict)));
    }
    if (kv.size() % 2 != 0) bad("SETITEMS with an odd number of items");
    dict->items.insert(dict->items.end(), kv.begin(), kv.end());
  }
  Value* global(std::string_view module, std::string_view name);
  Value* call(Value* callable, Value* args);
  Value* persistent(Value* pid);
  Value* rebuild_tensor(const std::vector<Value*>& args, size_t needed);
  uint64_t nonneg(const Value* v, const char* what) {
    if (v->kind == Value::kBool) return static_cast<uint64_t>(v->i);
    if (v->kind != Value::kInt || v->big || v->i < 0) {
      bad(fmt::format("{} must be a non-negative int, got {}", what, kind_name(v)));
    }
    return static_cast<uint64_t>(v->i);
  }
  std::vector<uint64_t> dims(const Value* v, const char* what) {
    if (v->kind != Value::kTuple && v->kind != Value::kList) {
      bad(fmt::format("{} must be a tuple of ints, got {}", what, kind_name(v)));
    }
    if (v->items.size() > kMaxTensorDims) {
      bad(fmt::format("{} has {} dimensions, more than {}", what, v->items.size(), kMaxTensorDims));
    }
    std::vector<uint64_t> out;
    for (const Value* d : v->items) out.push_back(nonneg(d, what));
    return out;
  }

  std::string_view data_;
  const std::string& label_;
  uint64_t base_;
  Flavor flavor_;
  size_t pos_ = 0;
  size_t op_at_ = 0;
  std::vector<std::unique_ptr<Value>> arena_;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
};

Value* Machine::global(std::string_view module, std::string_view name) {
  std::optional<Global> g;
  DType dtype = DType::kU8;
  if (module == "collections" && name == "OrderedDict") g = Global::kOrderedDict;
  if (module == "torch._utils") {
    if (name == "_rebuild_tensor_v2") g = Global::kRebuildTensorV2;
    if (name == "_rebuild_tensor") g = Global::kRebuildTensor;
    if (name == "_rebuild_parameter") g = Global::kRebuildParameter;
    if (name == "_rebuild_parameter_with_state") g = Global::kRebuildParameterWithState;
  }
  if (module == "torch._tensor" && name == "_rebuild_from_type_v2") g = Global::kRebuildFromTypeV2;
  if (module == "torch.nn.parameter" && name == "Parameter") g = Global::kParameter;
  if (module == "torch" && name == "Tensor") g = Global::kTensorClass;
  if (module == "torch" && name == "Size") g = Global::kSize;
  if (module == "torch") {
    for (const StorageClass& c : kStorageClasses) {
      if (name == c.name) g = Global::kStorageClass, dtype = c.dtype;
    }
  }
  if (!g) {
    bad(fmt::format(
        "global '{}.{}' is not allowed: smelt reads only plain state dicts (tensors in dicts) and "
        "never imports or runs anything from a checkpoint; if you trust the file, load it with "
        "torch and save model.state_dict() again (or as safetensors)",
        shown(module), shown(name)));
  }
  Value* v = make(Value::kGlobal);
  v->global = *g;
  v->dtype = dtype;
  v->s = fmt::format("{}.{}", module, name);
  return v;
}

// A storage from a persistent id: ('storage', class, key, location, numel[, view]).
Value* Machine::persistent(Value* pid) {
  if (flavor_ == Flavor::kPlain) bad("persistent id outside a torch state dict");
  const size_t want = flavor_ == Flavor::kLegacy ? 6 : 5;
  if (pid->kind != Value::kTuple || pid->items.size() != want ||
      pid->items[0]->kind != Value::kStr || pid->items[0]->s != "storage") {
    bad(fmt::format("persistent id must be a ('storage', ...) tuple of {} items", want));
  }
  const Value* cls = pid->items[1];
  if (cls->kind != Value::kGlobal || cls->global != Global::kStorageClass) {
    bad(fmt::format("persistent id names {} instead of a torch storage class", kind_name(cls)));
  }
  const Value* key = pid->items[2];
  if (key->kind != Value::kStr || key->s.empty() || key->s.size() > 64) {
    bad("persistent id's storage key must be a short non-empty str");
  }
  Value* s = make(Value::kStorage);
  s->dtype = cls->dtype;
  s->s = key->s;
  s->numel = nonneg(pid->items[4], "storage element count");
  if (flavor_ == Flavor::kLegacy && pid->items[5]->kind != Value::kNone) {
    // A legacy view: (view_key, offset, view_size) into the root storage.
    const Value* view = pid->items[5];
    if (view->kind != Value::kTuple || view->items.size() != 3) {
      bad("legacy storage view must be (key, offset, size)");
    }
    const uint64_t off = nonneg(view->items[1], "storage view offset");
    const uint64_t size = nonneg(view->items[2], "storage view size");
    if (off > s->numel || size > s->numel - off) {
      bad(fmt::format("storage view [{}, +{}) lies outside storage '{}' of {} elements", off, size,
                      shown(s->s), s->numel));
    }
    s->view_offset = off;
  }
  return s;
}

// _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) and
// _rebuild_tensor(storage, offset, size, stride): a descriptor; nothing is read yet.
Value* Machine::rebuild_tensor(const std::vector<Value*>& args, size_t needed) {
  if (args.size() < needed || args.size() > needed + 1) {
    bad(fmt::format("tensor rebuild expects {} arguments, got {}", needed, args.size()));
  }
  if (args[0]->kind != Value::kStorage) {
    bad(fmt::format("tensor rebuild's first argument is {}, not a storage", kind_name(args[0])));
  }
  Value* t = make(Value::kTensor);
  t->storage = args[0];
  t->dtype = args[0]->dtype;
  t->offset = nonneg(args[1], "storage offset");
  t->shape = dims(args[2], "tensor size");
  t->stride = dims(args[3], "tensor stride");
  if (t->shape.size() != t->stride.size()) {
    bad(fmt::format("tensor size has {} dimensions but stride has {}", t->shape.size(),
                    t->stride.size()));
  }
  return t;
}

Value* Machine::call(Value* callable, Value* args) {
  if (callable->kind != Value::kGlobal) {
    bad(fmt::format("REDUCE calls {}, which is not an allowed global", kind_name(callable)));
  }
  if (args->kind != Value::kTuple) bad("REDUCE arguments are not a tuple");
  const std::vector<Value*>& a = args->items;
  auto tensor_arg = [&](size_t n) {
    if (a.size() < n || a[0]->kind != Value::kTensor) {
      bad(fmt::format("'{}' must be called with a tensor first", callable->s));
    }
    return a[0];
  };
  switch (callable->global) {
    case Global::kOrderedDict: {
      Value* d = make(Value::kDict);
      if (a.empty()) return d;
      // OrderedDict([(k, v), ...]).
      if (a.size() != 1 || a[0]->kind != Value::kList) bad("OrderedDict(...) of other than a list");
      for (const Value* kv : a[0]->items) {
        if (kv->kind != Value::kTuple || kv->items.size() != 2) {
          bad("OrderedDict(...) list items must be (key, value) pairs");
        }
        d->items.push_back(kv->items[0]);
        d->items.push_back(kv->items[1]);
      }
      return d;
    }
    case Global::kRebuildTensorV2:
      return rebuild_tensor(a, 6);
    case Global::kRebuildTensor:
      return rebuild_tensor(a, 4);
    case Global::kRebuildParameter:
      return tensor_arg(3);
    case Global::kRebuildParameterWithState:
      return tensor_arg(4);
    case Global::kRebuildFromTypeV2: {
      // (func, new_type, args, state): func(*args), re-typed as Parameter or Tensor.
      if (a.size() != 4 || a[0]->kind != Value::kGlobal || a[1]->kind != Value::kGlobal ||
          (a[1]->global != Global::kParameter && a[1]->global != Global::kTensorClass)) {
        bad("_rebuild_from_type_v2 with arguments other than (rebuild, Parameter|Tensor, ...)");
      }
      Value* inner = a[2];
      if (a[0]->global != Global::kRebuildTensorV2 && a[0]->global != Global::kRebuildTensor) {
        bad(fmt::format("_rebuild_from_type_v2 calls '{}', which is not a tensor rebuild",
                        a[0]->s));
      }
      return call(a[0], inner);
    }
    case Global::kParameter:
      return tensor_arg(1);
    case Global::kSize: {
      if (a.size() != 1 || a[0]->kind != Value::kTuple)
        bad("torch.Size(...) of other than a tuple");
      return a[0];
    }
    case Global::kTensorClass:
    case Global::kStorageClass:
      break;
  }
  bad(fmt::format("REDUCE calls '{}', which cannot be called in a state dict", callable->s));
}

Value* Machine::run(size_t start, size_t* end) {
  pos_ = start;
  for (;;) {
    op_at_ = pos_;
    const unsigned char op = *take(1);
    switch (op) {
      case 0x80:  // PROTO
        if (*take(1) > 5) bad("pickle protocol newer than 5");
        break;
      case 0x95:  // FRAME: framing only, the bytes follow inline
        take(8);
        break;
      case '.': {  // STOP
        if (!marks_.empty()) bad("STOP with an open MARK");
        if (stack_.size() != 1) bad(fmt::format("STOP with {} values on the stack", stack_.size()));
        *end = pos_;
        return stack_.back();
      }
      case '(':  // MARK
        if (marks_.size() >= kMaxPickleStack) bad("too many nested MARKs");
        marks_.push_back(stack_.size());
        break;
      case '0':
        pop();
        break;  // POP
      case '1':
        pop_mark();
        break;  // POP_MARK
      case '2':
        push(top());
        break;  // DUP
      case 'N':
        push(make(Value::kNone));
        break;
      case 0x88:
      case 0x89: {  // NEWTRUE / NEWFALSE
        Value* v = make(Value::kBool);
        v->i = op == 0x88;
        push(v);
        break;
      }
      case 'J':
      case 'K':
      case 'M': {  // BININT / BININT1 / BININT2
        Value* v = make(Value::kInt);
        if (op == 'J') {
          v->i = static_cast<int32_t>(static_cast<uint32_t>(take_le(4)));
        } else {
          v->i = static_cast<int64_t>(take_le(op == 'K' ? 1 : 2));
        }
        push(v);
        break;
      }
      case 0x8a: {  // LONG1: n-byte two's complement little-endian
        const size_t n = *take(1);
        const unsigned char* p = take(n);
        Value* v = make(Value::kInt);
        if (n > 8) {
          v->big = true;
          v->s.assign(reinterpret_cast<const char*>(p), n);
        } else if (n > 0) {
          uint64_t u = 0;
          for (size_t k = 0; k < n; ++k) u |= static_cast<uint64_t>(p[k]) << (8 * k);
          if (n < 8 && (p[n - 1] & 0x80)) u |= ~uint64_t{0} << (8 * n);  // sign-extend
          v->i = static_cast<int64_t>(u);
        }
        push(v);
        break;
      }
      case 'G': {  // BINFLOAT (big-endian double)
        const unsigned char* p = take(8);
        uint64_t u = 0;
        for (int k = 0; k < 8; ++k) u = (u << 8) | p[k];
        Value* v = make(Value::kFloat);
        v->f = std::bit_cast<double>(u);
        push(v);
        break;
      }
      case 'X':
        push(str(Value::kStr, take_le(4)));
        break;  // BINUNICODE
      case 0x8c:
        push(str(Value::kStr, take_le(1)));
        break;      // SHORT_BINUNICODE
      case 0x8d: {  // BINUNICODE8
        const uint64_t n = take_le(8);
        if (n > data_.size()) take(data_.size() + 1);  // truncated
        push(str(Value::kStr, n));
        break;
      }
      case 'U':
        push(str(Value::kStr, take_le(1)));
        break;  // SHORT_BINSTRING
      case 'T':
        push(str(Value::kStr, take_le(4)));
        break;  // BINSTRING
      case 'C':
        push(str(Value::kBytes, take_le(1)));
        break;  // SHORT_BINBYTES
      case 'B':
        push(str(Value::kBytes, take_le(4)));
        break;  // BINBYTES
      case ')':
        push(tuple({}));
        break;  // EMPTY_TUPLE
      case 't':
        push(tuple(pop_mark()));
        break;  // TUPLE
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1..3
        const size_t n = op - 0x84u;
        if (stack_.size() < floor() + n) bad("TUPLE with too few values on the stack");
        std::vector<Value*> items(stack_.end() - static_cast<ptrdiff_t>(n), stack_.end());
        stack_.resize(stack_.size() - n);
        push(tuple(std::move(items)));
        break;
      }
      case ']':
        push(make(Value::kList));
        break;     // EMPTY_LIST
      case 'l': {  // LIST
        Value* v = make(Value::kList);
        v->items = pop_mark();
        push(v);
        break;
      }
      case 'a': {  // APPEND
        Value* item = pop();
        Value* list = top();
        if (list->kind != Value::kList) bad(fmt::format("APPEND to {}", kind_name(list)));
        list->items.push_back(item);
        break;
      }
      case 'e': {  // APPENDS
        std::vector<Value*> items = pop_mark();
        Value* list = top();
        if (list->kind != Value::kList) bad(fmt::format("APPENDS to {}", kind_name(list)));
        list->items.insert(list->items.end(), items.begin(), items.end());
        break;
      }
      case '}':
        push(make(Value::kDict));
        break;     // EMPTY_DICT
      case 'd': {  // DICT
        Value* v = make(Value::kDict);
        std::vector<Value*> kv = pop_mark();
        set_items(v, kv);
        push(v);
        break;
      }
      case 's': {  // SETITEM
        Value* value = pop();
        Value* key = pop();
        set_items(top(), {key, value});
        break;
      }
      case 'u': {  // SETITEMS
        std::vector<Value*> kv = pop_mark();
        set_items(top(), kv);
        break;
      }
      case 'q':
        memo_put(take_le(1));
        break;  // BINPUT
      case 'r':
        memo_put(take_le(4));
        break;  // LONG_BINPUT
      case 0x94:
        memo_put(memo_.size());
        break;  // MEMOIZE
      case 'h':
        memo_get(take_le(1));
        break;  // BINGET
      case 'j':
        memo_get(take_le(4));
        break;     // LONG_BINGET
      case 'c': {  // GLOBAL "module\nname\n"
        const std::string_view module = take_line();
        const std::string_view name = take_line();
        push(global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        Value* name = pop();
        Value* module = pop();
        if (module->kind != Value::kStr || name->kind != Value::kStr) {
          bad("STACK_GLOBAL with operands that are not strings");
        }
        push(global(module->s, name->s));
        break;
      }
      case 'R': {  // REDUCE
        Value* args = pop();
        Value* callable = pop();
        push(call(callable, args));
        break;
      }
      case 0x81: {  // NEWOBJ: only Parameter(tensor, requires_grad)
        Value* args = pop();
        Value* cls = pop();
        if (cls->kind != Value::kGlobal || cls->global != Global::kParameter) {
          bad(fmt::format("NEWOBJ of {}; only torch.nn.Parameter is allowed",
                          cls->kind == Value::kGlobal ? "'" + cls->s + "'" : kind_name(cls)));
        }
        push(call(cls, args));
        break;
      }
      case 'b': {  // BUILD: object state (module version info, tensor flags) is ignored
        Value* state = pop();
        (void)state;
        Value* obj = top();
        if (obj->kind != Value::kDict && obj->kind != Value::kTensor) {
          bad(fmt::format("BUILD on {}; only dicts and tensors are allowed", kind_name(obj)));
        }
        break;
      }
      case 'Q': {  // BINPERSID
        Value* pid = pop();
        push(persistent(pid));
        break;
      }
      default:
        bad(fmt::format(
            "opcode 0x{:02x}{} is not one a state dict uses; smelt refuses it rather than run it",
            op, op >= 0x20 && op < 0x7f ? fmt::format(" ('{}')", static_cast<char>(op)) : ""));
    }
  }
}

// The tensors of the dict `top`, checked against their storages.
std::vector<TorchTensorRef> state_dict_tensors(const Value* top, const std::string& label) {
  if (top->kind != Value::kDict) {
    fail(
        "{}: is not a state dict: its pickle holds {} where a dict of tensors was expected "
        "(save model.state_dict())",
        label, kind_name(top));
  }
  std::vector<TorchTensorRef> out;
  std::set<std::string_view> seen;
  for (size_t k = 0; k + 1 < top->items.size(); k += 2) {
    const Value* key = top->items[k];
    const Value* value = top->items[k + 1];
    if (key->kind != Value::kStr) {
      fail("{}: state dict key {} is {}, not a str", label, k / 2, kind_name(key));
    }
    if (value->kind != Value::kTensor) {
      fail(
          "{}: state dict entry '{}' is {}, not a tensor; smelt reads plain state dicts (a "
          "checkpoint wrapping one, like {{'state_dict': ...}}, must be unwrapped first)",
          label, shown(key->s), kind_name(value));
    }
    if (!seen.insert(key->s).second) fail("{}: tensor '{}' appears twice", label, shown(key->s));
    const Value* s = value->storage;
    TorchTensorRef t;
    t.name = key->s;
    t.storage_key = s->s;
    t.dtype = s->dtype;
    t.storage_numel = s->numel;
    t.shape = value->shape;
    t.stride = value->stride;
    // Highest element index touched; a sum that passes 2^64 stops early (each term is below
    // 2^128 - 2^65, so the 128-bit sum of a value below 2^64 and one term cannot wrap).
    unsigned __int128 last = static_cast<unsigned __int128>(s->view_offset) + value->offset;
    bool empty = false;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] == 0) empty = true;
      if (last >> 64) continue;
      if (t.shape[d] > 0) last += static_cast<unsigned __int128>(t.shape[d] - 1) * t.stride[d];
    }
    t.storage_offset = s->view_offset + value->offset;
    if (!empty && (last >> 64 || last >= s->numel)) {
      fail(
          "{}: tensor '{}' (offset {}, size {}, stride {}) reaches past its storage '{}' of {} "
          "elements; the file is corrupt",
          label, shown(t.name), value->offset, fmt::join(t.shape, "x"), fmt::join(t.stride, ","),
          shown(t.storage_key), s->numel);
    }
    if (empty) t.storage_offset = 0;
    out.push_back(std::move(t));
  }
  if (out.empty()) fail("{}: the state dict holds no tensors", label);
  return out;
}

}  // namespace

std::vector<TorchTensorRef> parse_state_dict_pickle(std::string_view data, const std::string& label,
                                                    uint64_t base_offset) {
  if (data.size() > kMaxPickleBytes) {
    fail("{}: pickle of {} bytes exceeds the limit of {}", label, data.size(), kMaxPickleBytes);
  }
  Machine m(data, label, base_offset, Flavor::kZip);
  size_t end = 0;
  const Value* top = m.run(0, &end);
  return state_dict_tensors(top, label);
}

TorchLegacyHead parse_legacy_head(std::string_view data, const std::string& label) {
  // Each of the five pickles runs on its own machine (fresh memo and stack).
  size_t pos = 0;
  auto next = [&](Flavor flavor, auto&& use) {
    Machine m(data, label, 0, flavor);
    size_t end = 0;
    const Value* v = m.run(pos, &end);
    use(v);
    pos = end;
  };
  // 0x1950a86a20f9469cfc6c, the legacy magic number, little-endian.
  static constexpr unsigned char kMagic[] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                             0x20, 0x6a, 0xa8, 0x50, 0x19};
  next(Flavor::kPlain, [&](const Value* v) {
    if (v->kind != Value::kInt || !v->big || v->s.size() != sizeof(kMagic) ||
        std::memcmp(v->s.data(), kMagic, sizeof(kMagic)) != 0) {
      fail("{}: not a PyTorch checkpoint (the legacy magic number is missing)", label);
    }
  });
  next(Flavor::kPlain, [&](const Value* v) {
    if (v->kind != Value::kInt || v->i != 1001) {
      fail("{}: legacy PyTorch protocol version is not 1001; unsupported", label);
    }
  });
  next(Flavor::kPlain, [&](const Value* v) {
    if (v->kind != Value::kDict) fail("{}: legacy system info is not a dict", label);
    for (size_t k = 0; k + 1 < v->items.size(); k += 2) {
      const Value* key = v->items[k];
      const Value* value = v->items[k + 1];
      if (key->kind == Value::kStr && key->s == "little_endian" &&
          !(value->kind == Value::kBool && value->i == 1)) {
        fail(
            "{}: a big-endian legacy checkpoint is not supported; re-save it on a "
            "little-endian machine",
            label);
      }
    }
  });
  TorchLegacyHead head;
  {
    Machine m(data, label, 0, Flavor::kLegacy);
    size_t end = 0;
    head.tensors = state_dict_tensors(m.run(pos, &end), label);
    pos = end;
  }
  next(Flavor::kPlain, [&](const Value* v) {
    if (v->kind != Value::kList) fail("{}: legacy storage key list is not a list", label);
    for (const Value* key : v->items) {
      if (key->kind != Value::kStr) fail("{}: legacy storage key is not a str", label);
      head.storage_order.push_back(key->s);
    }
  });
  head.data_start = pos;
  return head;
}

}  // namespace smelt::io
