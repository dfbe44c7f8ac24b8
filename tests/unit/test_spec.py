"""Fleet spec validation: the default fleet loads, and every error form names path, value and fix."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from cluster.spec import load_spec, parse_spec
from cluster.spec_errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"models": {"smol": {"source": "bundled:smollm2-135m-instruct"}}}


def slmfleet(*args):
    """Run the CLI as a user would, in a fresh process."""
    cmd = [sys.executable, "-m", "cluster.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False, timeout=60)


def issues_of(data):
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return caught.value.issues


def test_default_fleet_loads_with_specialists_of_each_contract_kind():
    spec = load_spec(ROOT / "fleet.yaml")
    assert spec.models["smol"].source == "bundled:smollm2-135m-instruct"
    kinds = {name: s.output for name, s in spec.specialists.items()}
    assert kinds["intent"].choice and kinds["extract"].json_schema and kinds["summarize"] is None
    assert spec.server.host == "127.0.0.1" and spec.server.port == 8000


def test_unknown_key_gets_path_and_did_you_mean():
    data = {"models": {"smol": {"source": "x/y", "max_model_lenn": 10}}}
    (issue,) = issues_of(data)
    assert issue.path == "models.smol.max_model_lenn"
    assert issue.problem == "unknown key"
    assert "did you mean 'max_model_len'?" in issue.fix


def test_unknown_nested_key_suggests_within_the_right_section():
    data = {"models": {"smol": {"source": "x/y", "autoscaling": {"max_replica": 3}}}}
    (issue,) = issues_of(data)
    assert issue.path == "models.smol.autoscaling.max_replica"
    assert "'max_replicas'" in issue.fix


def test_wrong_type_names_path_value_and_expectation():
    (issue,) = issues_of({"models": {"smol": {"source": "x/y", "max_model_len": "big"}}})
    assert issue.path == "models.smol.max_model_len"
    assert issue.value == "big"
    assert "integer" in issue.problem


def test_out_of_range_value_is_reported():
    (issue,) = issues_of({"models": {"smol": {"source": "x/y", "max_model_len": 0}}})
    assert issue.path == "models.smol.max_model_len" and issue.value == 0
    assert "greater than 0" in issue.problem


def test_missing_required_key():
    (issue,) = issues_of({"models": {"smol": {"tier": "slm"}}})
    assert issue.path == "models.smol.source"
    assert issue.fix.startswith("add 'source'")


def test_bad_literal_lists_the_allowed_values():
    (issue,) = issues_of({"models": {"smol": {"source": "x/y", "tier": "medium"}}})
    assert issue.path == "models.smol.tier"
    assert "'slm'" in issue.fix and "'llm'" in issue.fix


def test_specialist_pointing_at_unknown_model_suggests_the_close_one():
    data = {**MINIMAL, "specialists": {"intent": {"model": "smoll"}}}
    (issue,) = issues_of(data)
    assert issue.path == "specialists.intent.model"
    assert issue.value == "smoll"
    assert "did you mean 'smol'?" in issue.fix


def test_contract_needs_exactly_one_kind():
    data = {**MINIMAL, "specialists": {"s": {"model": "smol", "output": {"choice": ["a"], "regex": "a"}}}}
    (issue,) = issues_of(data)
    assert issue.path == "specialists.s.output"
    assert "exactly one" in issue.problem


def test_regex_that_does_not_compile():
    data = {**MINIMAL, "specialists": {"s": {"model": "smol", "output": {"regex": "(unclosed"}}}}
    (issue,) = issues_of(data)
    assert issue.path == "specialists.s.output.regex" and "does not compile" in issue.problem


def test_llm_cannot_scale_to_zero():
    data = {"models": {"big": {"source": "x/y", "tier": "llm", "autoscaling": {"min_replicas": 0}}}}
    (issue,) = issues_of(data)
    assert issue.path == "models.big" and "min_replicas" in issue.fix


def test_names_must_be_lowercase_identifiers():
    (issue,) = issues_of({"models": {"Big Model": {"source": "x/y"}}})
    assert issue.path.startswith("models.Big Model")


def test_all_problems_are_reported_at_once():
    data = {"models": {"a": {"source": "x/y", "max_model_len": -1, "dtype": "int3"}}, "serverr": {}}
    paths = {i.path for i in issues_of(data)}
    assert paths == {"models.a.max_model_len", "models.a.dtype", "serverr"}


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  smol:\n    source: [unclosed\n")
    with pytest.raises(SpecError) as caught:
        load_spec(bad)
    assert "line" in str(caught.value.issues[0].value) and "not valid YAML" in caught.value.issues[0].problem


def test_cli_prints_report_without_traceback_and_exits_2(tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text(yaml.safe_dump({"models": {"smol": {"source": "x/y", "max_model_lenn": 5}}}))
    proc = slmfleet("validate", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "models.smol.max_model_lenn" in proc.stderr and "max_model_len" in proc.stderr


def test_cli_validates_the_default_fleet(tmp_path):
    proc = slmfleet("validate", str(ROOT / "fleet.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "2 models, 5 specialists, 1 pipelines" in proc.stdout


def test_report_text_is_readable():
    data = textwrap.dedent("""
        models:
          smol: {source: x/y, max_model_len: nope}
    """)
    with pytest.raises(SpecError) as caught:
        parse_spec(yaml.safe_load(data), "fleet.yaml")
    report = str(caught.value)
    assert report.splitlines()[0] == "invalid fleet spec fleet.yaml: 1 problem"
    assert "models.smol.max_model_len" in report and "got: 'nope'" in report


def test_up_refuses_a_tool_that_does_not_import_with_exit_2(tmp_path):
    bad = tmp_path / "fleet.yaml"
    spec = {
        "models": {"smol": {"source": "x/y"}},
        "tools": {"lookup": {"python": "no_such_module:fn", "args_schema": {"type": "object"}}},
    }
    bad.write_text(yaml.safe_dump(spec))
    proc = slmfleet("up", "--spec", str(bad))
    assert proc.returncode == 2, proc.stderr
    assert "tools.lookup.python" in proc.stderr and "Traceback" not in proc.stderr


def test_up_refuses_to_open_beyond_loopback_without_keys(tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text(yaml.safe_dump({"models": {"smol": {"source": "x/y"}}, "server": {"host": "0.0.0.0"}}))
    proc = slmfleet("up", "--spec", str(bad))
    assert proc.returncode == 2, proc.stderr
    assert "server.host" in proc.stderr and "api_keys_env" in proc.stderr
