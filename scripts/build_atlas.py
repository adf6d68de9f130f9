"""Build the bundled atlas in Resources/atlas from the MNI ICBM152 2009a files inside nilearn's wheel.

Run once by a maintainer (``pip install nilearn`` first); nilearn is not needed at run time:

    python scripts/build_atlas.py Resources/atlas

The result is the atlas box of the reference protocol: 192 x 192 x 160 voxels of 1 mm around the
brain, holding the T1 template, a brain mask, grey/white matter and CSF probability maps (0..255)
and a ventricle mask used by the phantom generator.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from maediff_core.atlas import brain_box_centre, to_box, write_atlas

SOURCE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

LICENCE = """\
The files in this folder are derived from the MNI ICBM 152 non-linear symmetric 2009a template
(T1 brain, grey- and white-matter probability maps), as distributed inside the nilearn package.

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University. Permission to use, copy, modify, and distribute this software and its
documentation for any purpose and without fee is hereby granted, provided that the above copyright
notice appear in all copies. The authors and McGill University make no representations about the
suitability of this software for any purpose. It is provided "as is" without express or implied
warranty. The authors are not responsible for any data loss, equipment damage, property loss, or
injury to subjects or patients resulting from the use or misuse of this software package.

References: V.S. Fonov, A.C. Evans, R.C. McKinstry, C.R. Almli, D.L. Collins, "Unbiased nonlinear
average age-appropriate brain templates from birth to adulthood", NeuroImage 47 (2009) S102;
V.S. Fonov et al., "Unbiased average age-appropriate atlases for pediatric studies", NeuroImage
54 (2011) 313-327.

Derivation (scripts/build_atlas.py): cropped/padded to 192 x 192 x 160 voxels of 1 mm centred on the
brain; CSF = brain mask minus grey and white matter; ventricles = deep CSF components.
"""


def nilearn_data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise SystemExit("nilearn is not installed: pip install nilearn (only this script needs it)")
    return Path(spec.origin).parent / "datasets" / "data"


def as_uint8(probability: sitk.Image) -> sitk.Image:
    array = np.clip(sitk.GetArrayFromImage(probability), 0, 1)
    out = sitk.GetImageFromArray(np.round(array * 255).astype(np.uint8))
    out.CopyInformation(probability)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    out = parser.parse_args().output
    src = nilearn_data_dir()
    # nilearn stores the maps scaled 0..255; bring them to 0..1.
    t1, gm, wm = (
        sitk.Cast(sitk.ReadImage(str(src / SOURCE.format(name))) / 255.0, sitk.sitkFloat32)
        for name in ("t1", "gm", "wm")
    )
    brain = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(t1 > 0.05, [2, 2, 2]))
    brain = sitk.RelabelComponent(sitk.ConnectedComponent(brain)) == 1

    centre = brain_box_centre(brain)
    t1, gm, wm, brain = (to_box(im, centre) for im in (t1, gm, wm, brain))

    brain_f = sitk.Cast(brain, sitk.sitkFloat32)
    csf = sitk.Clamp(brain_f - gm - wm, lowerBound=0.0, upperBound=1.0)
    # Ventricles: CSF at least 15 mm inside the brain surface; the opening removes the thin
    # interhemispheric fissure and cisterns, leaving the wide ventricular cavities.
    depth = sitk.SignedMaurerDistanceMap(brain, insideIsPositive=True, useImageSpacing=True)
    deep_csf = sitk.BinaryMorphologicalOpening(sitk.And(csf > 0.5, depth > 15.0), [2, 2, 2])
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(deep_csf), minimumObjectSize=500)
    ventricles = sitk.Cast(labels > 0, sitk.sitkUInt8)

    images = {"t1": as_uint8(t1), "brainmask": sitk.Cast(brain, sitk.sitkUInt8), "gm": as_uint8(gm),
              "wm": as_uint8(wm), "csf": as_uint8(csf), "ventricles": ventricles}
    info = {
        "name": "MNI ICBM152 2009a (nilearn), atlas box 192x192x160 at 1 mm",
        "probability_scale": 255,
        "brain_voxels": int(sitk.GetArrayViewFromImage(brain).sum()),
        "ventricle_ml": float(sitk.GetArrayViewFromImage(ventricles).sum() / 1000.0),
    }
    write_atlas(out, "mni152_2009a", images, info)
    (out / "LICENSE-MNI152.txt").write_text(LICENCE)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
