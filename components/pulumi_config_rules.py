"""The Pulumi CLI's own rules for project and stack configuration, so `./hapbx check` and the
unit tests refuse what `pulumi preview` / `pulumi up` would refuse before running anything.

Ported from pulumi/pulumi at 1b5949891b3cefcb9974752b24a5ecef0acc86c8:
- sdk/go/common/workspace/project.go, ``Project.Validate`` (declarations) and
  ``ValidateConfigValue`` (types);
- pkg/workspace/config.go, ``mergeConfig`` and ``validateStackConfigValue`` (a stack against
  the declarations, on preview and up unless ``--skip-config-validation``).

The messages are the CLI's own. The CLI stops at the first problem; these list every one.
"""
from __future__ import annotations

import json
from typing import Any

import yaml

SECURE = "secure"


def load_yaml(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def _type_name(decl: dict) -> str:
    items = decl.get("items")
    return f"array<{_type_name(items)}>" if decl.get("type") == "array" and items else str(decl.get("type"))


def value_fits(type_name: str, items: dict | None, value: Any) -> bool:
    """ValidateConfigValue: does a (decoded) config value fit a declared type?"""
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "integer":
        if isinstance(value, bool):
            return False
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return True
        if isinstance(value, str):
            try:
                int(value, 10)  # strconv.Atoi
                return value.strip() == value
            except ValueError:
                return False
        return False
    if type_name == "boolean":
        return value in ("true", "false") or isinstance(value, bool)
    if type_name == "object":
        return isinstance(value, dict)
    if not isinstance(value, list) or items is None:
        return False
    return all(value_fits(items.get("type"), items.get("items"), v) for v in value)


def project_problems(project: dict) -> list[str]:
    """Project.Validate: the `config:` declarations themselves."""
    name = project.get("name")
    if not name:
        return ["project is missing a 'name' attribute"]
    problems = []
    for key, decl in (project.get("config") or {}).items():
        if not isinstance(decl, dict):
            continue  # shorthand: `key: value` is a default (RewriteShorthandConfigValues)
        if decl.get("default") is not None and decl.get("value") is not None:
            problems.append(f"project config '{key}' cannot have both a 'default' and 'value' attribute")
        typed = "type" in decl
        if ":" in key and not key.startswith(f"{name}:"):
            if typed:
                problems.append(f"Configuration key '{key}' is not namespaced by the project and should not "
                                "define a type")
            continue
        if typed and decl["type"] == "array" and decl.get("items") is None:
            problems.append(f"The configuration key '{key}' declares an array but does not specify the "
                            "underlying type via the 'items' attribute")
        if typed and decl.get("default") is not None and not value_fits(decl["type"], decl.get("items"),
                                                                         decl["default"]):
            problems.append(f"The default value specified for configuration key '{key}' is not of the "
                            f"expected type '{_type_name(decl)}'")
    return problems


def _stack_value(raw: Any) -> tuple[Any, bool]:
    """(value as the CLI decodes it, secure?) of a stack file entry. Scalars are strings to the
    CLI; objects and lists are JSON objects; `{secure: ...}` is an encrypted string."""
    if isinstance(raw, dict) and set(raw) == {SECURE}:
        return "<decrypted>", True
    if isinstance(raw, (dict, list)):
        return json.loads(json.dumps(raw)), False
    if isinstance(raw, bool):
        return ("true" if raw else "false"), False
    return ("" if raw is None else str(raw)), False


def _injected(default: Any) -> tuple[Any, bool]:
    """createConfigValue: a default the stack did not override, as the program will see it."""
    if isinstance(default, (str, int, float, bool)):
        return (str(default).lower() if isinstance(default, bool) else str(default)), False
    return json.loads(json.dumps(default)), False


def stack_problems(project: dict, stack: str, stack_doc: dict) -> list[str]:
    """mergeConfig with validate=true: what `pulumi preview -s <stack>` refuses in its config."""
    name = project["name"]
    declared = {k: (v if isinstance(v, dict) else {"default": v})
                for k, v in (project.get("config") or {}).items()}
    values = {k: _stack_value(v) for k, v in ((stack_doc or {}).get("config") or {}).items()}
    missing = []
    for key in sorted(declared):
        decl = declared[key]
        full = key if ":" in key else f"{name}:{key}"
        has_default, has_value = decl.get("default") is not None, decl.get("value") is not None
        if full not in values and not has_default and not has_value and full.startswith(f"{name}:"):
            missing.append(key)
        elif full not in values and (has_default or has_value):
            values[full] = _injected(decl["default"] if has_default else decl["value"])
    if missing:
        quoted = [f"'{k}'" for k in missing]
        listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
        return [f"Stack '{stack}' is missing configuration value{'s' if len(missing) > 1 else ''} {listed}"]
    problems = []
    for key in sorted(declared):
        decl = declared[key]
        if "type" not in decl:
            continue  # only explicitly typed keys are checked (IsExplicitlyTyped)
        value, secure = values[key if ":" in key else f"{name}:{key}"]
        if decl.get("secret") and not secure:
            problems.append(f"Stack '{stack}' with configuration key '{key}' must be encrypted as it's secret")
        elif not secure and not value_fits(decl["type"], decl.get("items"), value):
            problems.append(f"Stack '{stack}' with configuration key '{key}' must be of type '{_type_name(decl)}'")
    return problems


def check_stack_file(project_path: str, stack_path: str) -> list[str]:
    """Every problem the CLI would report for Pulumi.<stack>.yaml beside this Pulumi.yaml."""
    import os
    stack = os.path.basename(stack_path).removeprefix("Pulumi.").removesuffix(".yaml")
    project = load_yaml(project_path)
    return project_problems(project) + stack_problems(project, stack, load_yaml(stack_path))
