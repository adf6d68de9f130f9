"""Commands about models and the machine: models, device, publish, demo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..runtime import RUNTIMES
from .options import DEVICES


def add_models(sub) -> None:
    p = sub.add_parser("models", help="parameter counts and GFLOPs per forward of the named configurations")
    p.add_argument("names", nargs="*")
    p.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> None:
    from ..methods import named_configs
    from ..profile import describe

    for name in args.names or named_configs():
        print(describe(name))


def add_device(sub) -> None:
    p = sub.add_parser("device", help="JSON: the runtimes installed (torch, onnxruntime: versions or null) and the "
                                      "CUDA GPU torch sees")
    p.set_defaults(func=run_device)


def run_device(args: argparse.Namespace) -> None:
    import importlib.metadata

    from ..runtime import has_torch

    info = {"torch": None, "cuda": False}
    try:
        info["onnxruntime"] = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        info["onnxruntime"] = None
    if has_torch():
        import torch

        info.update(torch=torch.__version__, cuda=torch.cuda.is_available())
        if info["cuda"]:
            props = torch.cuda.get_device_properties(0)
            info.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                        count=torch.cuda.device_count())
    print(json.dumps(info))


def add_publish(sub) -> None:
    p = sub.add_parser("publish", help="a trained model as a release: weights, JSON card and Markdown card")
    p.add_argument("model", help="trained model, e.g. runs/NAME/best.json")
    p.add_argument("-o", "--output", required=True, help="destination stem: writes STEM.safetensors/.json/.md")
    p.add_argument("--description", required=True)
    p.add_argument("--data", help="the training data, as the card should name it")
    p.add_argument("--recipe", help="a text file with the commands that made the model")
    p.add_argument("--synthetic-data", action="store_true", help="trained on phantoms: the card says so")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    p.add_argument("--intended-use", help="who may use the model for what (default: research use, or demonstration "
                                          "only with --synthetic-data)")
    p.add_argument("--no-onnx", action="store_true", help="leave out the ONNX export of its networks")
    p.set_defaults(func=run_publish)


def run_publish(args: argparse.Namespace) -> None:
    from ..modelfile import publish_model

    notes = {"synthetic_data": True} if args.synthetic_data else {}  # absent: the card's own record stands
    if args.data:
        notes["data"] = args.data
    if args.recipe:
        notes["command"] = Path(args.recipe).read_text()
    if not args.no_onnx:
        from ..modelfile.onnx_export import onnx_packages

        onnx_packages()  # refused before anything is written
    paths = publish_model(args.model, args.output, args.description, notes, half=args.half,
                          intended_use=args.intended_use)
    if not args.no_onnx:
        from ..modelfile.onnx_export import export_onnx

        paths += export_onnx(args.output)
    for path in paths:
        print(path)


def add_export_onnx(sub) -> None:
    p = sub.add_parser("export-onnx", help="a model's networks as ONNX files beside it, named in its card with their "
                                           "hashes and their parity with torch")
    p.add_argument("model", help="model .json/.safetensors")
    p.add_argument("--opset", type=int, help="ONNX opset (default 18: ONNX Runtime 1.14 and later)")
    p.set_defaults(func=run_export_onnx)


def run_export_onnx(args: argparse.Namespace) -> None:
    from ..modelfile import load_card
    from ..modelfile.onnx_export import OPSET, export_onnx

    for path in export_onnx(args.model, args.opset or OPSET):
        print(path)
    for name, entry in load_card(args.model).onnx.items():
        print(f"{name}: {entry['file']} opset {entry['opset']}, inputs {', '.join(entry['inputs'])} -> "
              f"{', '.join(entry['outputs'])}, largest difference from torch {entry['parity']:.2g}")


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the bundled demo model on a generated sample case, with a figure")
    p.add_argument("-o", "--output", default="demo-output")
    p.add_argument("--model", help="model .json/.safetensors (default: the bundled demo model)")
    p.add_argument("--runtime", default="auto", choices=["auto", *RUNTIMES],
                   help="torch or onnx (ONNX Runtime); auto: torch where it is installed")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--record", action="store_true",
                   help="store the sample's Dice and lesion count in the model card (the tests and README read them)")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from ..demo import run_demo as demo

    demo(args.output, args.model, args.device, record=args.record, runtime=args.runtime)


COMMANDS = (add_models, add_device, add_publish, add_export_onnx, add_demo)
