// Tests for mergekit config parsing: parameter values, precedence, examples, and error messages.
#include "smelt/config/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "smelt/config/parameter.h"
#include "smelt/config/suggest.h"
#include "smelt/error.h"

namespace smelt::config {
namespace {

using ::testing::HasSubstr;

ParameterValue param(const std::string& yaml) {
  return ParameterValue::from_yaml(YAML::Load(yaml), "weight");
}

double eval(const ParameterValue& p, std::string_view tensor, double t) {
  std::optional<double> v = p.evaluate(tensor, t);
  EXPECT_TRUE(v.has_value()) << p.describe() << " at " << tensor << ", t=" << t;
  return v.value_or(-999.0);
}

// The message of the smelt::Error thrown by f, or "" (and a test failure) when none is thrown.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected smelt::Error";
  return "";
}

std::string param_error(const std::string& yaml) {
  return error_of([&] { param(yaml); });
}

std::string config_error(const std::string& yaml) {
  return error_of([&] { parse_config(yaml, "merge.yml"); });
}

// The warnings of a config that parses, one per line.
std::string config_warnings(const std::string& yaml) {
  std::string out;
  for (const std::string& w : parse_config(yaml, "merge.yml").warnings) out += w + "\n";
  return out;
}

constexpr char kTensor[] = "model.layers.3.mlp.up_proj.weight";

// ---------------------------------------------------------------------------------------------
// Parameter values

TEST(Parameter, ScalarIsTheSameForEveryTensorAndPosition) {
  ParameterValue p = param("0.3");
  EXPECT_EQ(p.kind(), ParameterValue::Kind::kScalar);
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.0), 0.3);
  EXPECT_DOUBLE_EQ(eval(p, "", 0.7), 0.3);
  EXPECT_DOUBLE_EQ(eval(param("2"), kTensor, 1.0), 2.0);
  EXPECT_DOUBLE_EQ(eval(param("-1.5"), kTensor, 1.0), -1.5);
}

TEST(Parameter, BooleansCoerceToOneAndZero) {
  EXPECT_DOUBLE_EQ(eval(param("true"), kTensor, 0), 1.0);
  EXPECT_DOUBLE_EQ(eval(param("false"), kTensor, 0), 0.0);
  EXPECT_DOUBLE_EQ(eval(param("yes"), kTensor, 0), 1.0);  // YAML 1.1, as PyYAML reads it
  EXPECT_DOUBLE_EQ(eval(param("[true, false]"), kTensor, 0.5), 0.5);
}

TEST(Parameter, PlainScientificNotationIsANumber) {
  EXPECT_DOUBLE_EQ(eval(param("1e-5"), kTensor, 0), 1e-5);
  EXPECT_DOUBLE_EQ(eval(param("1.0e+3"), kTensor, 0), 1000.0);
}

TEST(Parameter, GradientInterpolatesBetweenTwoPoints) {
  ParameterValue p = param("[0, 1]");
  EXPECT_EQ(p.kind(), ParameterValue::Kind::kGradient);
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.0), 0.0);
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.25), 0.25);
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.5), 0.5);
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 1.0), 1.0);
}

TEST(Parameter, GradientInterpolatesBetweenThreePoints) {
  ParameterValue p = param("[1, 0.7, 0.1]");
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.25), 0.85);  // halfway between 1 and 0.7
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.5), 0.7);
  EXPECT_NEAR(eval(p, kTensor, 0.75), 0.4, 1e-12);
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 1.0), 0.1);
}

TEST(Parameter, GradientInterpolatesBetweenFourPoints) {
  ParameterValue p = param("[0, 0.3, 0.7, 1]");
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.0), 0.0);
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.25), 0.225);  // s = 0.75 -> 0.75 * 0.3
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.5), 0.5);     // s = 1.5 -> midway 0.3..0.7
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 1.0), 1.0);
}

TEST(Parameter, GradientInterpolatesBetweenFivePoints) {
  ParameterValue p = param("[0, 0.5, 0.3, 0.7, 1]");
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.0), 0.0);
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.25), 0.5);
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.5), 0.3);
  EXPECT_NEAR(eval(p, kTensor, 0.3), 0.46, 1e-12);  // s = 1.2 -> 0.8 * 0.5 + 0.2 * 0.3
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 1.0), 1.0);
}

TEST(Parameter, SinglePointGradientIsConstant) {
  ParameterValue p = param("[0.4]");
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 0.0), 0.4);
  EXPECT_DOUBLE_EQ(eval(p, kTensor, 1.0), 0.4);
}

TEST(Parameter, FilterMatchesSubstringOfTensorName) {
  ParameterValue p = param("[{filter: mlp, value: 0.5}, {value: 0}]");
  EXPECT_EQ(p.kind(), ParameterValue::Kind::kConditional);
  EXPECT_DOUBLE_EQ(eval(p, "model.layers.0.mlp.down_proj.weight", 0), 0.5);
  EXPECT_DOUBLE_EQ(eval(p, "model.layers.0.self_attn.q_proj.weight", 0), 0.0);
  // Substring, not a glob and not a whole component: "lp.do" matches too.
  EXPECT_DOUBLE_EQ(eval(param("[{filter: lp.do, value: 2}]"), "x.mlp.down_proj", 0), 2.0);
}

TEST(Parameter, StarAndNullFiltersMatchEveryTensor) {
  EXPECT_DOUBLE_EQ(eval(param("[{filter: '*', value: 3}]"), kTensor, 0), 3.0);
  EXPECT_DOUBLE_EQ(eval(param("[{filter: null, value: 4}]"), kTensor, 0), 4.0);
  EXPECT_DOUBLE_EQ(eval(param("[{value: 5}]"), kTensor, 0), 5.0);
}

TEST(Parameter, FirstMatchingEntryWins) {
  ParameterValue p = param("[{filter: up_proj, value: 1}, {filter: mlp, value: 2}, {value: 3}]");
  EXPECT_DOUBLE_EQ(eval(p, "layers.0.mlp.up_proj.weight", 0), 1.0);
  EXPECT_DOUBLE_EQ(eval(p, "layers.0.mlp.gate_proj.weight", 0), 2.0);
  EXPECT_DOUBLE_EQ(eval(p, "layers.0.input_layernorm.weight", 0), 3.0);
}

TEST(Parameter, NoMatchingEntryIsAbsent) {
  ParameterValue p = param("[{filter: self_attn, value: 1}, {filter: mlp, value: 2}]");
  EXPECT_FALSE(p.evaluate("model.norm.weight", 0.5).has_value());
}

TEST(Parameter, EmptyTensorNameMatchesOnlyNullOrStarFilters) {
  EXPECT_FALSE(param("[{filter: mlp, value: 1}]").evaluate("", 0).has_value());
  EXPECT_FALSE(param("[{filter: '', value: 1}]").evaluate("", 0).has_value());
  EXPECT_DOUBLE_EQ(eval(param("[{filter: mlp, value: 1}, {value: 2}]"), "", 0), 2.0);
}

TEST(Parameter, GradientInsideFilterEntryIsEvaluatedAtT) {
  ParameterValue p = param(
      "[{filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}, {filter: mlp, value: [1, 0.5, 0.7, "
      "0.3, 0]}, {value: 0.5}]");
  EXPECT_DOUBLE_EQ(eval(p, "layers.2.self_attn.o_proj.weight", 0.25), 0.5);
  EXPECT_DOUBLE_EQ(eval(p, "layers.2.mlp.up_proj.weight", 0.5), 0.7);
  EXPECT_DOUBLE_EQ(eval(p, "layers.2.mlp.up_proj.weight", 1.0), 0.0);
  EXPECT_DOUBLE_EQ(eval(p, "model.norm.weight", 1.0), 0.5);
}

TEST(Parameter, NestedConditionalListIsEvaluatedRecursively) {
  ParameterValue p =
      param("[{filter: mlp, value: [{filter: up_proj, value: [0, 1]}, {value: 7}]}, {value: 9}]");
  EXPECT_DOUBLE_EQ(eval(p, "layers.0.mlp.up_proj.weight", 0.5), 0.5);
  EXPECT_DOUBLE_EQ(eval(p, "layers.0.mlp.down_proj.weight", 0.5), 7.0);
  EXPECT_DOUBLE_EQ(eval(p, "layers.0.self_attn.q_proj.weight", 0.5), 9.0);
}

TEST(Parameter, FirstMatchDecidesEvenWhenItsNestedListMatchesNothing) {
  // mergekit returns the nested result of the first matching entry, absent or not.
  ParameterValue p = param("[{filter: mlp, value: [{filter: up_proj, value: 1}]}, {value: 9}]");
  EXPECT_FALSE(p.evaluate("layers.0.mlp.down_proj.weight", 0).has_value());
}

TEST(Parameter, DescribeWritesFlowStyle) {
  EXPECT_EQ(param("0.5").describe(), "0.5");
  EXPECT_EQ(param("[1, 0.7, 0.1]").describe(), "[1, 0.7, 0.1]");
  EXPECT_EQ(param("[{filter: mlp, value: 0.5}, {value: [0, 1]}]").describe(),
            "[{filter: mlp, value: 0.5}, {value: [0, 1]}]");
}

TEST(Parameter, StringIsRejectedWithPathAndType) {
  EXPECT_EQ(param_error("abc"),
            "weight: expected a number, a list of numbers (gradient) or a list of {filter, "
            "value}; got string \"abc\"; remove the quotes if a number was meant");
  EXPECT_THAT(param_error("'0.5'"), HasSubstr("got string \"0.5\""));
}

TEST(Parameter, StringInsideGradientNamesTheElement) {
  EXPECT_THAT(param_error("[0, 0.5, high]"), HasSubstr("weight[2]: expected a number"));
}

TEST(Parameter, SingleMappingIsRejectedAtParseTime) {
  std::string e = param_error("{filter: mlp, value: 0.5}");
  EXPECT_THAT(e, HasSubstr("weight: a single {filter, value} mapping"));
  EXPECT_THAT(e, HasSubstr("put it in a list"));
}

TEST(Parameter, NullEmptyAndMixedListsAreRejected) {
  EXPECT_THAT(param_error("null"), HasSubstr("weight: expected a number"));
  EXPECT_THAT(param_error("null"), HasSubstr("got null"));
  EXPECT_THAT(param_error("[]"), HasSubstr("weight: empty list"));
  EXPECT_THAT(param_error("[0.5, {value: 1}]"),
              HasSubstr("weight[0]: expected a {filter, value} entry"));
  EXPECT_THAT(param_error("[[0, 1], [1, 0]]"), HasSubstr("weight[0]: a gradient holds numbers"));
  EXPECT_THAT(param_error(".nan"), HasSubstr("not a finite number"));
}

TEST(Parameter, FilterEntryKeysAreChecked) {
  EXPECT_THAT(param_error("[{fliter: mlp, value: 1}]"),
              HasSubstr("weight[0].fliter: unknown key in a {filter, value} entry; did you mean "
                        "'filter'?"));
  EXPECT_THAT(param_error("[{filter: mlp}]"), HasSubstr("weight[0]: {filter, value} entry "
                                                        "without 'value'"));
  EXPECT_THAT(param_error("[{filter: 12, value: 1}]"),
              HasSubstr("weight[0].filter: expected a string"));
  EXPECT_THAT(param_error("[{filter: mlp, value: abc}]"),
              HasSubstr("weight[0].value: expected a number"));
}

TEST(Parameter, HostileNestingAndAliasExpansionAreBounded) {
  std::string deep = "1";
  for (int i = 0; i < 20; ++i) deep = "[{value: " + deep + "}]";
  EXPECT_THAT(param_error(deep), HasSubstr("nested more than 16 deep"));

  // Each level lists the previous one ten times through an alias: 10^8 entries if expanded.
  std::string yaml =
      "l0: &l0 [{value: 1}, {value: 1}, {value: 1}, {value: 1}, {value: 1}, "
      "{value: 1}, {value: 1}, {value: 1}, {value: 1}, {value: 1}]\n";
  for (int level = 1; level <= 7; ++level) {
    const std::string prev = "{value: *l" + std::to_string(level - 1) + "}";
    yaml += "l" + std::to_string(level) + ": &l" + std::to_string(level) + " [";
    for (int i = 0; i < 10; ++i) yaml += (i ? ", " : "") + prev;
    yaml += "]\n";
  }
  EXPECT_THAT(error_of([&] { parse_parameter_settings(YAML::Load(yaml), "parameters"); }),
              HasSubstr("more than 100000 numbers and {filter, value} entries"));
}

TEST(Parameter, SettingsMustBeAMapping) {
  EXPECT_THAT(error_of([] { parse_parameter_settings(YAML::Load("[1, 2]"), "parameters"); }),
              HasSubstr("parameters: expected a mapping of parameter names"));
  EXPECT_TRUE(parse_parameter_settings(YAML::Load("~"), "parameters").empty());
}

// ---------------------------------------------------------------------------------------------
// Precedence

TEST(Precedence, HighestLevelThatSetsTheNameWins) {
  ParameterSettings source = parse_parameter_settings(YAML::Load("{weight: 1}"), "src");
  ParameterSettings slice = parse_parameter_settings(YAML::Load("{weight: 2}"), "slice");
  ParameterSettings module = parse_parameter_settings(YAML::Load("{weight: 3}"), "module");
  ParameterSettings top = parse_parameter_settings(YAML::Load("{weight: 4, density: 0.5}"), "top");
  auto r = resolve_parameter({&source, &slice, &module, &top}, "weight", kTensor, 0);
  ASSERT_TRUE(r);
  EXPECT_DOUBLE_EQ(r->value, 1.0);
  EXPECT_EQ(r->setting->yaml_path(), "src.weight");

  r = resolve_parameter({nullptr, &slice, &module, &top}, "weight", kTensor, 0);
  EXPECT_DOUBLE_EQ(r->value, 2.0);
  r = resolve_parameter({&source, &slice, &module, &top}, "density", kTensor, 0);
  EXPECT_DOUBLE_EQ(r->value, 0.5);
  EXPECT_EQ(r->setting->yaml_path(), "top.density");
  EXPECT_FALSE(resolve_parameter({&source, &slice, &module, &top}, "gamma", kTensor, 0));
}

TEST(Precedence, LevelWhoseFiltersMatchNothingFallsThrough) {
  ParameterSettings source =
      parse_parameter_settings(YAML::Load("{weight: [{filter: mlp, value: 1}]}"), "src");
  ParameterSettings slice = parse_parameter_settings(YAML::Load("{density: 0.1}"), "slice");
  ParameterSettings module = parse_parameter_settings(
      YAML::Load("{weight: [{filter: self_attn, value: [2, 4]}]}"), "module");
  ParameterSettings top = parse_parameter_settings(YAML::Load("{weight: 3}"), "top");
  const std::vector<const ParameterSettings*> levels = {&source, &slice, &module, &top};

  EXPECT_DOUBLE_EQ(resolve_parameter(levels, "weight", "layers.1.mlp.up_proj", 0)->value, 1.0);
  auto attn = resolve_parameter(levels, "weight", "layers.1.self_attn.q_proj", 0.5);
  EXPECT_DOUBLE_EQ(attn->value, 3.0);
  EXPECT_EQ(attn->setting->yaml_path(), "module.weight");
  auto norm = resolve_parameter(levels, "weight", "model.norm.weight", 0.5);
  EXPECT_DOUBLE_EQ(norm->value, 3.0);
  EXPECT_EQ(norm->setting->yaml_path(), "top.weight");
}

// ---------------------------------------------------------------------------------------------
// Suggestions

TEST(Suggest, SeparatorAndCaseDifferencesAreCheap) {
  const std::vector<std::string> methods = {
      "linear", "ties", "dare_ties", "dare_linear", "task_arithmetic", "breadcrumbs_ties"};
  EXPECT_EQ(closest_match("dare-ties", methods), "dare_ties");
  EXPECT_EQ(closest_match("DARE_LINEAR", methods), "dare_linear");
  EXPECT_EQ(closest_match("task-arithmetic", methods), "task_arithmetic");
}

TEST(Suggest, TyposAndTranspositionsFindTheKey) {
  const std::vector<std::string> keys = {"merge_method", "models",     "slices",
                                         "parameters",   "base_model", "dtype"};
  EXPECT_EQ(closest_match("merge_metod", keys), "merge_method");
  EXPECT_EQ(closest_match("paramters", keys), "parameters");
  EXPECT_EQ(closest_match("model", keys), "models");
  EXPECT_EQ(closest_match("dtpye", keys), "dtype");
  EXPECT_EQ(closest_match("base", keys), "base_model");  // prefix
}

TEST(Suggest, NothingPlausibleGivesEmpty) {
  EXPECT_EQ(closest_match("gate_mode", {"merge_method", "models", "slices"}), "");
  EXPECT_EQ(closest_match("x", {"t"}), "");
  EXPECT_EQ(closest_match("", {"t"}), "");
  EXPECT_DOUBLE_EQ(edit_distance("abc", "abc"), 0.0);
  EXPECT_DOUBLE_EQ(edit_distance("ab", "ba"), 1.0);
}

// ---------------------------------------------------------------------------------------------
// The examples of mergekit's examples/ folder (keys as in docs/config.md)

TEST(Config, LinearExampleParses) {
  MergeConfig c = parse_config(R"(models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      weight: 1.0
  - model: WizardLM/WizardLM-13B-V1.2
    parameters:
      weight: 0.3
  - model: garage-bAInd/Platypus2-13B
    parameters:
      weight: 0.5
merge_method: linear
dtype: float16
)",
                               "linear.yml");
  EXPECT_EQ(c.merge_method, "linear");
  ASSERT_EQ(c.models.size(), 3u);
  EXPECT_EQ(c.models[1].model.str(), "WizardLM/WizardLM-13B-V1.2");
  EXPECT_EQ(c.models[1].model.yaml_path, "models[1].model");
  EXPECT_DOUBLE_EQ(*c.models[1].parameters.at("weight").evaluate(kTensor, 0), 0.3);
  EXPECT_EQ(c.models[2].parameters.at("weight").yaml_path(), "models[2].parameters.weight");
  EXPECT_EQ(c.dtype, DType::kF16);
  EXPECT_FALSE(c.base_model);
  EXPECT_TRUE(c.uses_models());
  EXPECT_FALSE(c.uses_slices() || c.uses_modules() || c.uses_lora() || c.uses_tokenizer());
  EXPECT_THAT(c.yaml_text, HasSubstr("merge_method: linear"));
  EXPECT_EQ(c.filename, "linear.yml");
}

TEST(Config, TiesExampleParses) {
  MergeConfig c = parse_config(R"(models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
)",
                               "ties.yml");
  EXPECT_EQ(c.merge_method, "ties");
  ASSERT_TRUE(c.base_model);
  EXPECT_EQ(c.base_model->str(), "TheBloke/Llama-2-13B-fp16");
  EXPECT_EQ(c.models[0].parameters.at("density").kind(), ParameterValue::Kind::kGradient);
  EXPECT_DOUBLE_EQ(*c.models[1].parameters.at("weight").evaluate(kTensor, 0.5), 0.5);
  const ParameterValue& w = c.models[2].parameters.at("weight");
  EXPECT_DOUBLE_EQ(*w.evaluate("layers.0.mlp.up_proj.weight", 0), 0.5);
  EXPECT_DOUBLE_EQ(*w.evaluate("layers.0.self_attn.q_proj.weight", 0), 0.0);
  EXPECT_EQ(w.conditions()[1].yaml_path, "models[2].parameters.weight[1]");
  EXPECT_DOUBLE_EQ(*c.parameters.at("normalize").evaluate("", 0), 1.0);
  EXPECT_DOUBLE_EQ(*c.parameters.at("int8_mask").evaluate("", 0), 1.0);
  // base_model comes first, then the models in config order.
  auto refs = c.referenced_models();
  ASSERT_EQ(refs.size(), 4u);
  EXPECT_EQ(refs[0]->str(), "TheBloke/Llama-2-13B-fp16");
  EXPECT_EQ(refs[3]->str(), "WizardLM/WizardMath-13B-V1.0");
}

TEST(Config, BioMergeExampleParses) {
  MergeConfig c = parse_config(R"(models:
  - model: mistralai/Mistral-7B-Instruct-v0.2
    parameters:
      density: 0.5
      weight: 0.5
  - model: BioMistral/BioMistral-7B
    parameters:
      density: 0.5
      weight: 0.5
merge_method: ties
base_model: mistralai/Mistral-7B-v0.1
parameters:
  normalize: false
  int8_mask: true
dtype: float16
)",
                               "bio-merge.yml");
  EXPECT_EQ(c.models.size(), 2u);
  EXPECT_DOUBLE_EQ(*c.parameters.at("normalize").evaluate("", 0), 0.0);
  EXPECT_EQ(c.base_model->str(), "mistralai/Mistral-7B-v0.1");
}

TEST(Config, GradientSlerpExampleParses) {
  MergeConfig c = parse_config(R"(slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 40]
      - model: garage-bAInd/Platypus2-13B
        layer_range: [0, 40]
merge_method: slerp
base_model: psmathur/orca_mini_v3_13b
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float16
)",
                               "gradient-slerp.yml");
  ASSERT_EQ(c.slices.size(), 1u);
  ASSERT_EQ(c.slices[0].sources.size(), 2u);
  const InputSlice& s = c.slices[0].sources[1];
  EXPECT_EQ(s.layer_start, 0);
  EXPECT_EQ(s.layer_end, 40);
  EXPECT_EQ(s.yaml_path, "slices[0].sources[1]");
  EXPECT_EQ(s.model.yaml_path, "slices[0].sources[1].model");
  const ParameterValue& t = c.parameters.at("t");
  EXPECT_DOUBLE_EQ(*t.evaluate("layers.10.self_attn.k_proj.weight", 0.25), 0.5);
  EXPECT_DOUBLE_EQ(*t.evaluate("layers.10.mlp.up_proj.weight", 0.75), 0.3);
  EXPECT_DOUBLE_EQ(*t.evaluate("lm_head.weight", 0), 0.5);
  EXPECT_TRUE(c.uses_slices());
  EXPECT_EQ(c.referenced_models().size(), 2u);  // base is also a source
}

TEST(Config, PassthroughFrankenmergeParses) {
  MergeConfig c = parse_config(R"(slices:
  - sources:
    - model: psmathur/orca_mini_v3_13b
      layer_range: [0, 24]
  - sources:
    - model: garage-bAInd/Platypus2-13B
      layer_range: [20, 40]
merge_method: passthrough
dtype: float16
)",
                               "orcamini-platy-44layer.yml");
  ASSERT_EQ(c.slices.size(), 2u);
  EXPECT_EQ(c.slices[0].sources[0].layer_end, 24);
  EXPECT_EQ(c.slices[1].sources[0].layer_start, 20);
  EXPECT_EQ(c.slices[1].sources[0].layer_end, 40);
  EXPECT_EQ(c.merge_method, "passthrough");
}

TEST(Config, MultiDocumentRecipeParsesEveryDocument) {
  const std::string text = R"(name: first-merge
merge_method: linear
models:
  - model: model_a
  - model: model_b
parameters:
  weight: 0.5
---
name: second-merge
merge_method: slerp
base_model: first-merge
models:
  - model: first-merge
  - model: model_c
parameters:
  t: 0.5
---
merge_method: dare_ties
base_model: base
models:
  - model: second-merge
    parameters:
      density: 0.6
      weight: 0.5
  - model: model_d
    parameters:
      density: 0.6
      weight: 0.5
)";
  std::vector<MergeConfig> docs = parse_config_documents(text, "multi.yml");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].name, "first-merge");
  EXPECT_EQ(docs[1].name, "second-merge");
  EXPECT_FALSE(docs[2].name);
  EXPECT_EQ(docs[1].base_model->str(), "first-merge");
  EXPECT_EQ(docs[2].merge_method, "dare_ties");
  EXPECT_EQ(docs[2].models[0].model.str(), "second-merge");
  EXPECT_THAT(docs[1].yaml_text, HasSubstr("name: second-merge"));
  EXPECT_THAT(docs[1].yaml_text, ::testing::Not(HasSubstr("first-merge\nmerge_method: linear")));

  EXPECT_THAT(config_error(text), HasSubstr("merge.yml: (top level): the file holds 3 YAML "
                                            "documents"));
}

TEST(Config, MultiDocumentErrorsNameTheDocument) {
  std::string e = error_of([] {
    parse_config_documents(
        "merge_method: linear\nmodels: [{model: a}]\n---\nmerge_method: "
        "linear\nmodels: [{model: a, parameters: {weight: x}}]\n",
        "multi.yml");
  });
  EXPECT_THAT(e, HasSubstr("multi.yml (document 2): models[0].parameters.weight: expected a "
                           "number"));
}

TEST(Config, EmptyDocumentsAreSkipped) {
  auto docs = parse_config_documents(
      "# recipe\n---\nmerge_method: linear\nmodels: [{model: "
      "a}]\n---\n# nothing\n",
      "m.yml");
  EXPECT_EQ(docs.size(), 1u);
  EXPECT_THAT(config_error(""), HasSubstr("merge.yml: (top level): the file holds no "
                                          "configuration"));
}

TEST(Config, TokenizerBlockParses) {
  MergeConfig c = parse_config(R"(merge_method: linear
models: [{model: a}, {model: b}]
tokenizer:
  source: union
  tokens:
    <|im_start|>:
      source: chatml_model
    <|eot_id|>:
      source: llama3_model
      force: true
    <|renamed_token|>:
      source:
        kind: model_token
        model: path/to/model
        token: <|original_token|>
    <|by_id|>:
      source: {kind: model_token, model: m, token_id: 7}
    <|unused|>:
      source:
        kind: zero
  pad_to_multiple_of: 64
chat_template: auto
)",
                               "merge.yml");
  ASSERT_TRUE(c.tokenizer);
  EXPECT_TRUE(c.uses_tokenizer());
  EXPECT_EQ(c.tokenizer->source.kind, TokenizerSource::Kind::kUnion);
  EXPECT_EQ(c.tokenizer->pad_to_multiple_of, 64);
  const auto& tokens = c.tokenizer->tokens;
  ASSERT_EQ(tokens.size(), 5u);
  EXPECT_EQ(tokens[0].token, "<|im_start|>");
  EXPECT_EQ(tokens[0].source.kind, TokenEmbeddingSource::Kind::kModel);
  EXPECT_EQ(tokens[0].source.model->str(), "chatml_model");
  EXPECT_FALSE(tokens[0].force);
  EXPECT_TRUE(tokens[1].force);
  EXPECT_EQ(tokens[2].source.kind, TokenEmbeddingSource::Kind::kModelToken);
  EXPECT_EQ(tokens[2].source.token, "<|original_token|>");
  EXPECT_EQ(tokens[2].source.model->str(), "path/to/model");
  EXPECT_EQ(tokens[3].source.token_id, 7);
  EXPECT_EQ(tokens[4].source.kind, TokenEmbeddingSource::Kind::kZero);
  EXPECT_EQ(tokens[4].yaml_path, "tokenizer.tokens[\"<|unused|>\"]");
  EXPECT_EQ(c.chat_template, "auto");
  EXPECT_TRUE(c.uses_chat_template());
}

TEST(Config, TokenizerSourceAcceptsUnionBaseOrModel) {
  auto source = [](const std::string& value) {
    return parse_config("merge_method: linear\nmodels: [{model: a}]\ntokenizer_source: " + value,
                        "m.yml")
        .tokenizer_source;
  };
  EXPECT_EQ(source("union")->kind, TokenizerSource::Kind::kUnion);
  EXPECT_EQ(source("base")->kind, TokenizerSource::Kind::kBase);
  auto model = source("org/tok@v2");
  EXPECT_EQ(model->kind, TokenizerSource::Kind::kModel);
  EXPECT_EQ(model->model->ref.revision, "v2");
  EXPECT_FALSE(source("null"));
}

TEST(Config, ModelReferenceStringAndMappingForms) {
  MergeConfig c = parse_config(R"(merge_method: linear
models:
  - model: org/model@v1+org/lora@main
  - model:
      model: {path: org/other, revision: abc}
      lora: org/lora2@r2
      override_architecture: MistralForCausalLM
  - model: {model: plain/path@rev}
)",
                               "m.yml");
  const io::ModelRef& a = c.models[0].model.ref;
  EXPECT_EQ(a.path, "org/model");
  EXPECT_EQ(a.revision, "v1");
  EXPECT_EQ(a.lora_path, "org/lora");
  EXPECT_EQ(a.lora_revision, "main");
  const ModelReference& b = c.models[1].model;
  EXPECT_EQ(b.str(), "org/other@abc+org/lora2@r2");
  EXPECT_EQ(b.override_architecture, "MistralForCausalLM");
  EXPECT_EQ(c.models[2].model.ref.path, "plain/path");
  EXPECT_EQ(c.models[2].model.ref.revision, "rev");
  EXPECT_TRUE(c.uses_lora());
  EXPECT_TRUE(c.uses_override_architecture());
}

TEST(Config, ModulesParseWithTheirOwnParameters) {
  MergeConfig c = parse_config(R"(merge_method: linear
modules:
  text_decoder:
    models:
      - model: a
      - model: b
    parameters:
      weight: 0.5
  vision_tower:
    slices:
      - sources:
          - model: a
            layer_range: [0, 12]
)",
                               "m.yml");
  ASSERT_EQ(c.modules.size(), 2u);
  EXPECT_TRUE(c.uses_modules());
  EXPECT_EQ(c.modules[0].name, "text_decoder");
  EXPECT_EQ(c.modules[0].parameters.at("weight").yaml_path(),
            "modules.text_decoder.parameters.weight");
  EXPECT_EQ(c.modules[1].slices[0].sources[0].yaml_path,
            "modules.vision_tower.slices[0].sources[0]");
  EXPECT_EQ(c.referenced_models().size(), 2u);

  EXPECT_THAT(
      config_error("merge_method: linear\nmodules:\n  text:\n    parameters: {weight: 1}\n"),
      HasSubstr("merge.yml: modules.text: Must specify either output slices or models to "
                "merge"));
}

TEST(Config, SliceExtrasParse) {
  MergeConfig c = parse_config(R"(merge_method: ties
slices:
  - sources:
      - model: a
        layer_range: [4, 8]
        parameters: {weight: 0.7}
      - model: b
        layer_range: [0, 4]
    base_model: b
    residual_weight: 0.1
    parameters: {density: [0.2, 0.8]}
out_dtype: torch.bfloat16
dtype: float32
)",
                               "m.yml");
  const OutputSlice& s = c.slices[0];
  EXPECT_EQ(s.base_model->str(), "b");
  EXPECT_DOUBLE_EQ(*s.residual_weight, 0.1);
  EXPECT_EQ(s.sources[0].parameters.at("weight").yaml_path(),
            "slices[0].sources[0].parameters.weight");
  EXPECT_EQ(s.parameters.at("density").yaml_path(), "slices[0].parameters.density");
  EXPECT_EQ(c.out_dtype, DType::kBF16);
  EXPECT_EQ(c.dtype, DType::kF32);
}

// ---------------------------------------------------------------------------------------------
// Bad inputs

TEST(ConfigError, StringWeightNamesPathAndType) {
  EXPECT_THAT(config_error(R"(merge_method: linear
models:
  - model: a
    parameters: {weight: 1}
  - model: b
    parameters:
      weight: abc
)"),
              HasSubstr("merge.yml: models[1].parameters.weight: expected a number, a list of "
                        "numbers (gradient) or a list of {filter, value}; got string \"abc\""));
}

TEST(ConfigWarning, UnknownKeySuggestsTheClosestValidKey) {
  EXPECT_EQ(config_warnings("merge_method: linear\nmodels:\n  - model: a\n    paramters: {}\n"),
            "merge.yml: models[0].paramters: unknown key (ignored); did you mean 'parameters'?\n");
  EXPECT_THAT(config_error("merge_method: x\nslices:\n  - sources:\n      - model: a\n        "
                           "layer_range: [0, 1]\n      - model: b\n        layer_rnage: [0, 1]\n"),
              HasSubstr("merge.yml: slices[0].sources[1].layer_range: missing; add layer_range: "
                        "[start, end] (end exclusive) (note: slices[0].sources[1].layer_rnage: "
                        "unknown key (ignored); did you mean 'layer_range'?)"));
  EXPECT_THAT(
      config_warnings("merge_method: linear\nmodels: [{model: a}]\ntokenizer: {sorce: base}"),
      HasSubstr("merge.yml: tokenizer.sorce: unknown key (ignored); did you mean 'source'?"));
  EXPECT_THAT(config_warnings("merge_method: linear\nmodels:\n  - model: {model: a, lorra: b}\n"),
              HasSubstr("models[0].model.lorra: unknown key (ignored); did you mean 'lora'?"));
}

// mergekit ignores keys it does not know; real configs carry e.g. `revision:` beside a slice
// source's model.
TEST(ConfigWarning, UnknownKeysAreIgnoredAsInMergekit) {
  const MergeConfig c = parse_config(
      "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n        revision: "
      "main\n        layer_range: [0, 2]\n",
      "merge.yml");
  ASSERT_EQ(c.slices.size(), 1u);
  EXPECT_EQ(c.slices[0].sources[0].layer_end, 2);
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_EQ(c.warnings[0],
            "merge.yml: slices[0].sources[0].revision: unknown key (ignored); valid keys here are "
            "model, layer_range, parameters");
}

TEST(ConfigWarning, UnknownKeyWithoutCloseMatchListsValidKeys) {
  std::string w = config_warnings("merge_method: linear\nmodels: [{model: a}]\nexperts: []\n");
  EXPECT_THAT(w, HasSubstr("merge.yml: experts: unknown key (ignored); valid keys here are "
                           "merge_method, "));
  EXPECT_THAT(w, HasSubstr("mergekit-moe"));
  EXPECT_THAT(w, HasSubstr("smelt moe"));
}

TEST(ConfigWarning, MultiDocumentWarningsNameTheDocument) {
  const auto docs = parse_config_documents(
      "merge_method: linear\nmodels: [{model: a}]\n---\nmerge_method: linear\nmodels: [{model: "
      "a, weight: 1}]\n",
      "multi.yml");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_TRUE(docs[0].warnings.empty());
  ASSERT_EQ(docs[1].warnings.size(), 1u);
  EXPECT_THAT(docs[1].warnings[0], HasSubstr("multi.yml (document 2): models[0].weight: unknown "
                                             "key (ignored)"));
}

// A misspelt required key reads as missing; the error still says what was probably meant.
TEST(ConfigError, MissingKeyErrorNamesTheUnknownKeysToo) {
  EXPECT_EQ(config_error("merge_metod: linear\nmodels: [{model: a}]\n"),
            "merge.yml: merge_method: missing required key; add e.g. merge_method: linear (note: "
            "merge_metod: unknown key (ignored); did you mean 'merge_method'?)");
}

TEST(ConfigError, BothModelsAndSlicesAreRejected) {
  std::string e = config_error(R"(merge_method: linear
models: [{model: a}]
slices:
  - sources: [{model: a, layer_range: [0, 2]}]
)");
  EXPECT_THAT(e, HasSubstr("merge.yml: slices: Exactly one of 'models', 'slices', or 'modules' "
                           "must be present"));
  EXPECT_THAT(e, HasSubstr("'models' and 'slices'"));
}

TEST(ConfigError, NeitherModelsNorSlicesIsRejected) {
  EXPECT_THAT(config_error("merge_method: linear\ndtype: float16\n"),
              HasSubstr("merge.yml: (top level): Exactly one of 'models', 'slices', or 'modules' "
                        "must be present"));
  // An empty list counts as absent, as in mergekit.
  EXPECT_THAT(config_error("merge_method: linear\nmodels: []\n"),
              HasSubstr("merge.yml: models: Exactly one of"));
}

TEST(ConfigError, BadLayerRangeIsRejected) {
  auto with_range = [](const std::string& range) {
    return config_error(
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n"
        "        layer_range: " +
        range + "\n");
  };
  EXPECT_THAT(with_range("[0]"), HasSubstr("merge.yml: slices[0].sources[0].layer_range: expected "
                                           "two integers [start, end]"));
  EXPECT_THAT(with_range("[0, 4, 8]"), HasSubstr("got a list of 3"));
  EXPECT_THAT(with_range("[0, x]"),
              HasSubstr("slices[0].sources[0].layer_range[1]: expected an integer layer index; "
                        "got string \"x\""));
  EXPECT_THAT(with_range("[0, 2.5]"), HasSubstr("layer_range[1]: expected an integer"));
  EXPECT_THAT(with_range("[10, 5]"), HasSubstr("[10, 5] ends before it starts"));
  EXPECT_THAT(with_range("[-1, 4]"), HasSubstr("negative layer index"));
  EXPECT_THAT(with_range("8"), HasSubstr("got integer 8"));
  EXPECT_THAT(config_error("merge_method: passthrough\nslices:\n  - sources:\n      - model: a\n"),
              HasSubstr("slices[0].sources[0].layer_range: missing"));
  // An empty range is accepted (mergekit accepts it too).
  EXPECT_NO_THROW(
      parse_config("merge_method: passthrough\nslices:\n  - sources:\n      - model: "
                   "a\n        layer_range: [3, 3]\n",
                   "m.yml"));
}

TEST(ConfigError, UnknownDtypeListsAcceptedNames) {
  EXPECT_EQ(config_error("merge_method: linear\nmodels: [{model: a}]\ndtype: fp16\n"),
            "merge.yml: dtype: unknown dtype \"fp16\"; use one of bfloat16, float16, float32, "
            "int64 (a \"torch.\" prefix is allowed)");
  EXPECT_THAT(config_error("merge_method: linear\nmodels: [{model: a}]\nout_dtype: bfloat\n"),
              HasSubstr("merge.yml: out_dtype: unknown dtype \"bfloat\"; did you mean "
                        "'bfloat16'?"));
}

TEST(ConfigError, TokenizerAndTokenizerSourceTogetherAreRejected) {
  EXPECT_THAT(config_error("merge_method: linear\nmodels: [{model: a}]\ntokenizer_source: "
                           "union\ntokenizer:\n  source: base\n"),
              HasSubstr("merge.yml: tokenizer: Cannot specify both tokenizer_source and "
                        "tokenizer"));
}

TEST(ConfigError, SingleMappingParameterIsRejected) {
  EXPECT_THAT(config_error("merge_method: slerp\nmodels: [{model: a}, {model: b}]\nbase_model: "
                           "a\nparameters:\n  t:\n    filter: self_attn\n    value: 0.3\n"),
              HasSubstr("merge.yml: parameters.t: a single {filter, value} mapping is not a "
                        "parameter value; put it in a list"));
}

TEST(ConfigError, YamlSyntaxErrorReportsLineAndColumn) {
  std::string e = config_error(
      "merge_method: linear\nmodels:\n  - model: a\n    parameters: "
      "{weight: [1, 2}\n");
  EXPECT_THAT(e, ::testing::StartsWith("merge.yml:4:"));
  EXPECT_THAT(e, HasSubstr("YAML syntax error"));
  // Line numbers count from the start of the file, not of the document.
  std::string multi = error_of([] {
    parse_config_documents(
        "merge_method: linear\nmodels: [{model: a}]\n---\nmerge_method: "
        "linear\nmodels:\n  - model: a\n   bad: [\n",
        "multi.yml");
  });
  EXPECT_THAT(multi, ::testing::MatchesRegex("multi\\.yml:(6|7|8):[0-9]+: YAML syntax error.*"));
}

TEST(ConfigError, MissingOrMistypedRequiredKeys) {
  EXPECT_THAT(config_error("models: [{model: a}]\n"),
              HasSubstr("merge.yml: merge_method: missing required key"));
  EXPECT_THAT(config_error("merge_method: 5\nmodels: [{model: a}]\n"),
              HasSubstr("merge.yml: merge_method: expected a merge method name"));
  EXPECT_THAT(config_error("merge_method: linear\nmodels: [{parameters: {weight: 1}}]\n"),
              HasSubstr("merge.yml: models[0]: missing 'model'"));
  EXPECT_THAT(config_error("merge_method: linear\nmodels: a\n"),
              HasSubstr("merge.yml: models: expected a list of {model, parameters}; got string "
                        "\"a\""));
  EXPECT_THAT(config_error("- a\n- b\n"), HasSubstr("merge.yml: (top level): expected a mapping"));
}

TEST(ConfigError, DuplicateKeysAreRejected) {
  EXPECT_THAT(config_error("merge_method: linear\nmerge_method: ties\nmodels: [{model: a}]\n"),
              HasSubstr("merge.yml: merge_method: duplicate key"));
  EXPECT_THAT(config_error("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1, "
                           "weight: 2}}]\n"),
              HasSubstr("models[0].parameters.weight: duplicate"));
}

TEST(ConfigError, BadModelReferencesNameTheirPath) {
  EXPECT_THAT(config_error("merge_method: linear\nmodels: [{model: a+b+c}]\n"),
              HasSubstr("merge.yml: models[0].model: "));
  EXPECT_THAT(config_error("merge_method: linear\nmodels:\n  - model: {model: a@b@c}\n"),
              HasSubstr("merge.yml: models[0].model.model: invalid model path 'a@b@c' - multiple "
                        "@"));
}

TEST(ConfigError, TokenSourceNeedsExactlyOneOfTokenIdOrToken) {
  const std::string head =
      "merge_method: linear\nmodels: [{model: a}]\ntokenizer:\n  tokens:\n"
      "    tok:\n      source: ";
  EXPECT_THAT(config_error(head + "{kind: model_token, model: m}\n"),
              HasSubstr("merge.yml: tokenizer.tokens.tok.source: token_id or token must be "
                        "specified"));
  EXPECT_THAT(config_error(head + "{kind: model_token, model: m, token_id: 1, token: x}\n"),
              HasSubstr("only one of token_id or token may be specified"));
  EXPECT_THAT(config_error(head + "{kind: zeros}\n"),
              HasSubstr("tokenizer.tokens.tok.source.kind: unknown kind \"zeros\"; did you mean "
                        "'zero'?"));
  EXPECT_THAT(config_error(head + "m\n      force: maybe\n"),
              HasSubstr("tokenizer.tokens.tok.force: expected true or false"));
}

}  // namespace
}  // namespace smelt::config
