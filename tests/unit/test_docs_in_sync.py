"""Pulumi.yaml's config block and the README table are generated from the schema: no drift."""
from components import config_docs as docs
from tests.mockrun import ROOT


def test_pulumi_yaml_matches_schema():
    with open(f"{ROOT}/Pulumi.yaml") as fh:
        assert fh.read() == docs.project_file(), "run ./hapbx docs"


def test_readme_config_table_matches_schema():
    with open(f"{ROOT}/README.md") as fh:
        text = fh.read()
    assert docs.BEGIN in text and docs.readme_with_table(text) == text, "run ./hapbx docs"


def test_every_key_is_documented():
    from components.config import ClusterConfig
    from components.schema import describe
    rows = describe(ClusterConfig)
    assert len(rows) > 80 and all(r["doc"].strip() for r in rows)
