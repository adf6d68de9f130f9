"""The README tells what the bundled model's card says, and the code and the documentation cite only
files that are in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from maediff_core.diffusion_config import levels_text
from maediff_core.modelfile import load_card
from maediff_core.resources import default_model_path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# A path inside the repository, as the code's comments and the docs write one.
CITED = re.compile(r"(?<![\w/.-])((?:docs|scripts|Testing|maediff_core|MAEDiffAnomaly|Resources)/[\w./*-]*\w)")


def tracked(*patterns: str) -> list[Path]:
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in names]


def test_the_readme_is_for_users_and_short():
    assert len(README.splitlines()) <= 300


def test_the_readme_gives_the_bundled_models_operating_point_and_sample_result_as_its_card():
    card = load_card(default_model_path())
    point = re.search(r"t_test (\S+), stride (\d+),\s+threshold (\d\.\d+)", README)
    assert point, "the README names the bundled model's operating point"
    assert point.groups() == (levels_text(card.config.diffusion.t_test), str(card.config.patch.stride),
                              f"{card.threshold:.4f}")
    reading = re.search(r"\*\*reading point\*\*, threshold (\d\.\d+) with\s+candidates of (\d+) voxels", README)
    assert reading, "the README names the bundled model's reading point"
    assert reading.groups() == (f"{card.reading['threshold']:.4f}", str(card.reading["min_voxels"]))
    assert f"(`{card.scoring.label}`)" in README
    sample = card.metrics["sample"]
    found = re.search(r"bundled sample: (\d+) lesion candidates?, on the tumour, Dice\s+(\d+\.\d) %", README)
    assert found, "the README gives the bundled sample's result"
    assert found.groups() == (str(sample["lesions"]["mean"]), f"{100 * sample['dice']['mean']:.1f}")


def test_the_code_and_the_docs_cite_only_files_in_the_repository():
    sources = tracked("*.py", "*.md", "*.sh", "*.txt", "Makefile")
    missing = []
    outside = ("REFERENCE" + ".md", "../" + "shared")  # the project's old notes, outside the repository
    for source in sources:
        text = source.read_text()
        assert not any(name in text for name in outside), source
        for cited in CITED.findall(text):
            if cited.rsplit("/", 1)[-1].isupper():
                continue  # a placeholder the reader fills in (Resources/models/NAME)
            # A file, a folder, or the stem of files (maediff-small-demo.*), from the root, beside the
            # source, or in the module folder (the built module's own Resources/).
            bases = (ROOT, source.parent, ROOT / "MAEDiffAnomaly")
            if not any(any(base.glob(cited.rstrip(".") + "*")) for base in bases):
                missing.append(f"{source.relative_to(ROOT)}: {cited}")
    assert not missing, missing
    # Images and pages the README and docs link to by a relative path.
    for page in [ROOT / "README.md", *tracked("docs/*.md")]:
        for link in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / link).exists() or (ROOT / link).exists(), f"{page.name}: {link}"
