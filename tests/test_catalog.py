"""Bundled models: every one loads, equals the import of its config.json, and is found by name or path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from moesim.catalog import bundled_models, load_model, model_from_toml
from moesim.errors import InputError
from moesim.hf_import import load_hf_config
from moesim.scenario import bundled_scenarios, load_scenario

HF_CONFIGS = Path(__file__).resolve().parent / "data" / "hf_configs"

BUNDLED = sorted(bundled_models())


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_toml_equals_the_import_of_its_config_json(name):
    bundled = load_model(name)
    imported = load_hf_config(HF_CONFIGS / f"{name}.json", name=bundled.name)
    assert bundled == imported


def test_every_real_config_fixture_has_a_bundled_model():
    configs = {p.stem for p in HF_CONFIGS.glob("*.json") if not p.stem.startswith("bad-")}
    assert configs == set(BUNDLED)


def test_load_model_accepts_a_toml_path_a_config_json_and_a_folder(tmp_path):
    by_name = load_model("mixtral-8x7b")
    by_toml = load_model(bundled_models()["mixtral-8x7b"])
    by_json = load_model(HF_CONFIGS / "mixtral-8x7b.json")
    folder = tmp_path / "Mixtral-8x7B"
    folder.mkdir()
    shutil.copy(HF_CONFIGS / "mixtral-8x7b.json", folder / "config.json")
    by_dir = load_model(folder)
    assert by_name == by_toml
    assert by_dir.name == "Mixtral-8x7B"  # config.json takes its folder's name
    for m in (by_json, by_dir):
        assert m.model_copy(update={"name": by_name.name}) == by_name


def test_model_name_lookup_is_case_insensitive():
    assert load_model("DeepSeek-V3") == load_model("deepseek-v3")


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(InputError) as exc:
        load_model("mixtral-9x9b")
    assert exc.value.field == "model"
    for name in BUNDLED:
        assert name in exc.value.message


def test_model_toml_without_a_name_takes_the_file_stem(tmp_path):
    text = bundled_models()["tiny-moe"].read_text().replace('name = "tiny-moe"\n', "")
    p = tmp_path / "my-toy.toml"
    p.write_text(text)
    assert model_from_toml(p).name == "my-toy"


def test_model_toml_typo_names_the_file_and_the_key(tmp_path):
    p = tmp_path / "typo.toml"
    p.write_text(bundled_models()["tiny-moe"].read_text().replace("top_k", "topk"))
    with pytest.raises(InputError) as exc:
        load_model(p)
    assert exc.value.source == str(p) and "topk" in str(exc.value) and "unknown key" in str(exc.value)


@pytest.mark.parametrize("name", sorted(bundled_scenarios()))
def test_every_bundled_scenario_loads_and_resolves(name):
    s = load_scenario(name)
    assert s.resolve_model().num_layers > 0
    assert s.resolve_hardware().accelerator.memory_bytes > 0


def test_a_scenario_file_is_read_again_when_it_changes_and_callers_get_their_own_copy(tmp_path):
    from moesim.scenario import read_scenario_raw

    src = (Path(__file__).resolve().parents[1] / "scenarios" / "mixtral-8x7b-serve-h100.toml").read_text()
    path = tmp_path / "s.toml"
    path.write_text(src.replace('model = "mixtral-8x7b"', f'model = "{Path(__file__).resolve().parents[1]}/scenarios/models/mixtral-8x7b.toml"'))
    assert load_scenario(path).workload.batch_size == 64
    path.write_text(path.read_text().replace("batch_size = 64", "batch_size = 32"))
    assert load_scenario(path).workload.batch_size == 32
    raw, _, _ = read_scenario_raw(path)
    raw["workload"]["batch_size"] = 7
    assert read_scenario_raw(path)[0]["workload"]["batch_size"] == 32
    assert load_scenario(path, ["workload.batch_size=16"]).workload.batch_size == 16
    assert load_scenario(path).workload.batch_size == 32


def test_bundled_scenario_names_are_found_without_listing_the_folder_and_unknown_ones_list_them() -> None:
    for name in bundled_scenarios():
        assert load_scenario(name).name == name
    with pytest.raises(InputError, match="known: .*mixtral-8x7b-serve-h100"):
        load_scenario("no-such-scenario")
    with pytest.raises(InputError, match="unknown scenario"):
        load_scenario("../scenarios/mixtral-8x7b-serve-h100")


def test_bundled_names_read_their_file_again_when_it_changes_or_goes(tmp_path, monkeypatch):
    """A bundled model or profile looked up by name is the file's current content: the existence check's stat
    is the one the parse cache compares, so an edit is seen and a removed file is unknown again."""
    import shutil

    import moesim.catalog as catalog
    import moesim.hardware as hardware
    from moesim.catalog import load_model
    from moesim.hardware import load_hardware

    repo = Path(__file__).resolve().parents[1]
    models, profiles = tmp_path / "models", tmp_path / "profiles"
    models.mkdir()
    profiles.mkdir()
    shutil.copy(repo / "scenarios" / "models" / "mixtral-8x7b.toml", models)
    shutil.copy(repo / "hardware_profiles" / "h100-sxm.toml", profiles)
    monkeypatch.setattr(catalog, "_models_dir", lambda: str(models))
    monkeypatch.setattr(hardware, "_hardware_dir", lambda: str(profiles))
    monkeypatch.chdir(tmp_path)

    assert load_model("mixtral-8x7b").num_layers == 32
    assert load_hardware("h100-sxm").accelerator.memory_bytes == 80e9
    m, h = models / "mixtral-8x7b.toml", profiles / "h100-sxm.toml"
    m.write_text(m.read_text().replace("num_layers = 32", "num_layers = 16"))
    h.write_text(h.read_text().replace('value = "80 GB"', 'value = "96 GB"'))
    assert load_model("mixtral-8x7b").num_layers == 16
    assert load_hardware("h100-sxm").accelerator.memory_bytes == 96e9
    m.unlink()
    h.unlink()
    with pytest.raises(InputError, match="unknown model"):
        load_model("mixtral-8x7b")
    with pytest.raises(InputError, match="unknown hardware profile"):
        load_hardware("h100-sxm")
