"""Config edits shared by the tests of bad baseline settings (test_baselines and
test_valuation_experiments)."""

import copy

import ml_collections


def with_baseline_setting(config: ml_collections.ConfigDict, path: str, value
                          ) -> ml_collections.ConfigDict:
  """A copy of `config` with `baselines.<path>` set to `value`, of any type.

  The method's section is rebuilt from a dict: a ConfigDict refuses to change a field's
  type (an int field set to 2.5), which is exactly the typo these tests make.
  """
  config = copy.deepcopy(config)
  method, *keys = path.split('.')
  section = config.baselines[method].to_dict()
  node = section
  for key in keys[:-1]:
    node = node[key]
  node[keys[-1]] = value
  config.baselines[method] = ml_collections.ConfigDict(section)
  return config
