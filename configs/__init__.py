"""Configuration: the schema (`Config`), its loader, and the help text made from it."""
from configs.loader import as_dict, changed_options, load_config
from configs.output import describe, dump_yaml
from configs.schema import Config

__all__ = ["Config", "load_config", "as_dict", "changed_options", "describe", "dump_yaml"]
