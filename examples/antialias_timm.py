"""Anti-alias a timm resnet18 (BlurPool): the rewrite keeps every weight, filter_size=1 leaves the
outputs unchanged, and blurring makes the features more shift-equivariant and the predictions more
shift-consistent on natural images (scikit-image's samples; no download).

    python examples/antialias_timm.py [--model resnet18] [--filter-size 4] [--size 224] [--pairs 20]
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F

import reverso
from reverso.study.data import sample_images
from reverso.study.shift import consistency, feature_equivariance, features_at

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--filter-size", type=int, default=4)
    parser.add_argument(
        "--size", type=int, default=224, help="crop size (images are resized to size + 32)"
    )
    parser.add_argument("--pairs", type=int, default=20, help="shifted crop pairs per image")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = timm.create_model(
        args.model, pretrained=False
    ).eval()  # (load pretrained weights here if you have them)
    big = sample_images(args.size + 32, NAMES)
    images = F.interpolate(big, size=(args.size, args.size), mode="bilinear", antialias=True)
    input_size = (3, args.size, args.size)

    identity = reverso.antialias(model, input_size=input_size, filter_size=1).eval()
    blurred = reverso.antialias(model, input_size=input_size, filter_size=args.filter_size).eval()
    with torch.no_grad():
        reference = model(images)
        change = (identity(images) - reference).abs().max().item()
    print(
        f"{args.model}: anti-aliased {len(blurred.antialiased)} downsamplings: {', '.join(blurred.antialiased)}"
    )
    print(f"filter_size=1 reproduces the outputs: max |difference| = {change:.2e}")
    kept = model.state_dict()
    print(
        f"weights kept: {all(torch.equal(kept[k], blurred.state_dict()[k]) for k in kept)} ({len(kept)} tensors)"
    )

    result = {"identity_max_abs_diff": change, "equivariance": {}, "consistency": {}}
    nodes = [n.name for n in identity.graph.nodes if n.name.endswith("_1_act2")] or [
        list(identity.graph.nodes)[-3].name
    ]
    print("\nfeature shift-equivariance (cosine distance, circular shifts 1-3 px; 0 is perfect)")
    for node in nodes:
        before = feature_equivariance(features_at(identity, node), images, shifts=(1, 2, 3))
        after = feature_equivariance(features_at(blurred, node), images, shifts=(1, 2, 3))
        result["equivariance"][node] = (before, after)
        print(
            f"  {node:<16} baseline {before:.4f}   filter {args.filter_size}: {after:.4f}   ({before / max(after, 1e-12):.1f}x better)"
        )
    for label, net in (("baseline", model), (f"filter {args.filter_size}", blurred)):
        hard = consistency(net, big, max_shift=32, pairs=args.pairs)
        soft = consistency(net, big, max_shift=32, pairs=args.pairs, soft=True)
        result["consistency"][label] = (hard, soft)
    print("\nshift consistency over random 32-px shifts (two crops of each image):")
    for label, (hard, soft) in result["consistency"].items():
        print(f"  {label:<10} same class {hard:.1%}   output cosine similarity {soft:.4f}")
    print("  (random weights predict one class for every image, so only the soft measure moves;")
    print("   load pretrained weights to see the paper's class consistency)")
    return result


if __name__ == "__main__":
    main()
