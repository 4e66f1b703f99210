"""The plugin is found through its entry point, in a fresh process."""

from mmllm_sdk.testing import check_discovered


def test_the_plugin_is_discovered_through_its_entry_point():
    row = check_discovered(
        "depth",
        "mmllm-depth",
        {"modalities": ["depth"], "encoders": ["depth/depth-vit"], "datasets": ["depth-synthetic"]},
    )
    assert row["version"] == "0.1.0"
