"""Static checks of the Slicer module: the widget names the code uses exist in the .ui file, the
model card as the panel reads it, the two builds of the module folder (CMake and
``make slicer-module``) ship the same files, and the built folder is self-contained."""

import json
import re
import subprocess
import sys
import urllib.parse
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from MAEDiffAnomalyLib import model_card
from MAEDiffAnomalyLib import scene as scene_lib
from MAEDiffAnomalyLib.runner import DetectionProcess, DetectRequest, overall_fraction

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "MAEDiffAnomaly"
UI = MODULE / "Resources" / "UI" / "MAEDiffAnomaly.ui"
SOURCE = (MODULE / "MAEDiffAnomaly.py").read_text()
sys.path.insert(0, str(ROOT / "scripts"))
import build_slicer_module  # noqa: E402


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def test_every_widget_the_code_uses_is_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", SOURCE))
    assert used, "the widget uses no ui names?"
    missing = used - set(ui_widgets())
    assert not missing, f"not in {UI.name}: {sorted(missing)}"


def test_the_threshold_slider_can_show_small_scores():
    def results(threshold: float, score_max: float):
        return scene_lib.Results(None, None, None, None, None, Path("."), None, None, {}, threshold, score_max)

    assert results(0.05, 0.4).slider_step() == (pytest.approx(0.0004), 4)
    step, decimals = results(0.0002, 0.0046).slider_step()  # a MAD-AD model's
    assert decimals == 6 and round(step, decimals) == pytest.approx(step, rel=0.1)


def test_model_card_summary_operating_point_and_overrides(tmp_path):
    card = {"config": {"name": "pddpm-s48-small", "method": "pddpm", "diffusion": {"t_test": 500},
                       "patch": {"stride": 48, "whole_slice": False}}, "threshold": 0.0734,
            "training": {"epoch": 40, "train_volumes": 80, "synthetic_data": True},
            "description": "Trained on synthetic phantoms."}
    text = model_card.summary(card)
    assert "pddpm-s48-small (pddpm)" in text and "threshold 0.0734" in text and "stride 48" in text
    assert model_card.operating_point(card) == {"t_test": "500", "stride": 48, "threshold": 0.0734,
                                                "whole_slice": False, "point": "protocol", "scoring": "residual"}
    reading = card | {"reading": {"threshold": 0.11, "min_voxels": 27},
                      "scoring": {"name": "mhd", "samples": 4, "normalise": True}}
    assert model_card.operating_point(reading) == model_card.operating_point(card) | {"point": "reading",
                                                                                      "scoring": "mhd:4"}
    assert model_card.threshold_text(reading, "reading") == "model's (0.1100)"
    assert model_card.threshold_text(reading, "protocol") == "model's (0.0734)"
    ensemble = {"config": {"name": "cddpm-small", "method": "cddpm", "diffusion": {"t_test": [250, 500, 750]},
                           "patch": {"stride": 16, "whole_slice": True}}, "threshold": None}
    assert model_card.operating_point(ensemble)["t_test"] == "250, 500, 750"
    assert "cddpm-small (cddpm); t_test 250, 500, 750; no threshold" in model_card.summary(ensemble)
    madad = {"config": {"name": "madad-small", "method": "madad", "diffusion": {"t_test": [10]}, "latent": {"eta": 0.5},
                        "patch": {"stride": 16, "whole_slice": True}}, "threshold": 0.05}
    assert model_card.operating_point(madad)["t_test"] == "10" and model_card.operating_point(madad)["whole_slice"]
    summary = model_card.summary(madad)
    assert "madad-small (madad); t_test 10; scores the change its repair of the latent makes" in summary
    assert model_card.is_synthetic(card)
    assert not model_card.is_synthetic({"training": {}, "description": "IXI fold 0"})
    # Nothing changed in the panel: the command carries none of the card's settings.
    untouched = DetectRequest(Path("in.nrrd"), Path("out"), **model_card.overrides(0, model_card.MODEL_DEFAULT, 0.0))
    assert not {"--t-test", "--stride", "--threshold"} & set(untouched.command("python"))
    changed = DetectRequest(Path("in.nrrd"), Path("out"), **model_card.overrides(0, "16", 0.02)).command("python")
    assert changed[changed.index("--stride") + 1] == "16" and changed[changed.index("--threshold") + 1] == "0.02"
    assert "--t-test" not in changed
    with pytest.raises(FileNotFoundError):
        model_card.read_card(tmp_path / "absent.json")


def test_progress_is_one_bar_across_stages():
    stages = ["load", "preprocess", "reconstruct", "postprocess", "write", "done"]
    points = [overall_fraction(stage, f) for stage in stages for f in (0.0, 0.5, 1.0)]
    assert points == sorted(points) and points[0] == 0.0 and points[-1] == 1.0
    assert overall_fraction("preprocess", 0.5) > overall_fraction("preprocess", 0.0)


def test_a_line_the_system_encoding_cannot_decode_does_not_stop_the_progress(tmp_path):
    """Slicer's launchConsoleProcess reads the child's output as strict text in the system's encoding."""
    child = ("import sys; out = sys.stdout.buffer; out.write(b'\\xff\\xfe not text\\n'); out.flush(); "
             "out.write(b'{\"stage\": \"write\", \"fraction\": 1.0}\\n'); out.flush()")

    def strict_launch(args, update):
        return subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                encoding="utf-8", errors="strict")

    process = DetectionProcess(DetectRequest(tmp_path / "in.nii.gz", tmp_path / "out"), sys.executable, strict_launch)
    assert process.finished() == (True, "")
    assert process.progress.stage == "write" and process.progress.fraction == 1.0


# The catalog-entry schema the description names (Slicer's Schemas/slicer-extension-catalog-entry-schema-
# v1.0.1.json): required keys, no others, and each key's type and allowed values.
CATALOG_SCHEMA = {"required": {"$schema", "category", "scm_url"},
                  "types": {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                            "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int},
                  "enums": {"scm_type": {"git", "local"}, "tier": {1, 3, 5}}}


def test_the_extension_description_passes_the_extensions_index_checks():
    """What the Extensions Index checks of a description (its check_description_files.py) without the network."""
    project = re.search(r"project\((\w+)\)", (ROOT / "CMakeLists.txt").read_text()).group(1)
    descriptions = [p.name for p in ROOT.glob("*.json")]
    assert descriptions == [f"{project}.json"]  # named after the extension
    entry = json.loads((ROOT / descriptions[0]).read_text())
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert CATALOG_SCHEMA["required"] <= set(entry) <= set(CATALOG_SCHEMA["types"])
    for key, value in entry.items():
        assert isinstance(value, CATALOG_SCHEMA["types"][key]), key
        assert value in CATALOG_SCHEMA["enums"].get(key, [value]), key
    assert all(isinstance(d, str) for d in entry.get("build_dependencies", []))
    assert entry["category"] in ("Segmentation", "Neuroimaging", "Analysis")  # of its accepted categories
    url = urllib.parse.urlsplit(entry["scm_url"])
    assert url.scheme in ("git", "https")
    assert "slicer" in Path(url.path).stem.lower()  # the repository is named Slicer<Name>
    assert any((ROOT / name).is_file() for name in ("LICENSE", "LICENCE", "LICENSE.txt", "COPYING"))
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for field in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        urls = re.search(rf'set\({field} "([^"]+)"\)', cmake).group(1).split()
        assert urls and all(u.startswith(f"https://raw.githubusercontent.com{url.path[:-4]}/") for u in urls), field


def cmake_file_sets() -> set[str]:
    """The files MAEDiffAnomaly/CMakeLists.txt installs, as paths in the module folder."""
    cmake = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MAEDiffAnomaly")
    listed = set()
    for block in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        body = re.search(rf"set\({block}\n(.*?)\n\s*\)", cmake, re.S).group(1)
        listed |= {line.strip() for line in body.splitlines() if line.strip()}
    globs = re.findall(r"file\((GLOB|GLOB_RECURSE) \w+ RELATIVE \$\{PROJECT_SOURCE_DIR\}(.*?)\)", cmake, re.S)
    for kind, body in globs:
        for pattern in re.findall(r"\$\{PROJECT_SOURCE_DIR\}/(\S+)", body):
            # CMake's GLOB matches in the pattern's folder; GLOB_RECURSE in every folder below it too.
            folder, name = pattern.rsplit("/", 1)
            found = (ROOT / folder).rglob(name) if kind == "GLOB_RECURSE" else (ROOT / folder).glob(name)
            listed |= {str(p.relative_to(ROOT)) for p in found if p.is_file() and "__pycache__" not in p.parts}
    return listed


def test_cmake_and_make_slicer_module_ship_the_same_files():
    built = set(build_slicer_module.module_files())
    assert cmake_file_sets() == built
    top = (ROOT / "CMakeLists.txt").read_text()
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                  "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({field} "[^"]+"\)', top), field
    # PyTorch is optional (detection runs on ONNX Runtime): the extension depends on no other.
    assert 'set(EXTENSION_DEPENDS "NA")' in top
    assert json.loads((ROOT / "MAEDiffAnomaly.json").read_text())["build_dependencies"] == []


def test_the_built_folder_holds_the_module_the_core_and_its_resources(tmp_path):
    archive = build_slicer_module.build(tmp_path)
    folder = tmp_path / "MAEDiffAnomaly"
    for relative in ("MAEDiffAnomaly.py", "MAEDiffAnomalyLib/scene.py", "maediff_core/cli/__main__.py",
                     "Resources/UI/MAEDiffAnomaly.ui", "Resources/atlas/atlas.json",
                     "Resources/models/maediff-small-demo.safetensors", "Resources/samples/MAEDiffT2Sample.nii.gz"):
        assert (folder / relative).is_file(), relative
    with zipfile.ZipFile(archive) as zipped:
        names = set(zipped.namelist())
    assert names == {f"MAEDiffAnomaly/{p.relative_to(folder)}" for p in folder.rglob("*") if p.is_file()}
    # With only the module folder on the path (as in Slicer), the core finds its bundled files there.
    probe = ("import sys; sys.path[:0] = [sys.argv[1]]; from maediff_core import resources as r; "
             "print(r.resources_dir(), r.default_model_path().is_file(), r.sample_paths()[0].is_file())")
    done = subprocess.run([sys.executable, "-I", "-c", probe, str(folder)], capture_output=True, text=True,
                          cwd=tmp_path, check=True)
    assert done.stdout.split() == [str(folder / "Resources"), "True", "True"]


def test_every_module_of_the_core_ships_and_imports_from_the_built_folder(tmp_path):
    """A subpackage the globs missed would fail here, not in a user's Slicer."""
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "maediff_core"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    modules = sorted(p[:-3].replace("/", ".").removesuffix(".__init__") for p in tracked if p.endswith(".py"))
    assert {"maediff_core.methods.cddpm", "maediff_core.methods.madad.repair", "maediff_core.cli.detect"} \
        <= set(modules)
    build_slicer_module.build(tmp_path)
    folder = tmp_path / "MAEDiffAnomaly"
    probe = ("import importlib, sys; sys.path[:0] = [sys.argv[1]]; "
             "[importlib.import_module(m) for m in sys.argv[2:] if m != 'maediff_core.cli.__main__']; "
             "import maediff_core; print(maediff_core.__file__)")
    done = subprocess.run([sys.executable, "-I", "-c", probe, str(folder), *modules], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(folder / "maediff_core" / "__init__.py")
