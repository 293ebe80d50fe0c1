from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_a_valid_launcher_config():
    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    validate_config(config)  # raises on a schema error
    assert config["head_node_type"] in config["available_node_types"]
    assert any("raymotion" in cmd for cmd in config["setup_commands"])
