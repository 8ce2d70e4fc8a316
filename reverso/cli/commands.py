"""What each command does. Heavy imports (torch, timm, foolbox) happen inside the commands."""

from __future__ import annotations

from pathlib import Path

from reverso.names import MODELS


def _load_model(spec: str, args):
    """A module from a MODEL argument (see reverso.cli.parser.MODEL_HELP)."""
    from reverso import models
    from reverso.convert.saving import load
    from reverso.errors import OptionError

    kwargs = {"num_classes": args.num_classes} if getattr(args, "num_classes", None) else {}
    if spec.endswith(".safetensors"):
        return load(spec, trust=args.trust)
    if spec in MODELS:
        return models.create(spec, **kwargs)
    if ":" in spec:  # a factory named on the command line: its package is trusted
        from reverso.frontend.sources import Source, build

        source = Source.from_json({"factory": spec, "kwargs": kwargs}, "MODEL", OptionError)
        return build(source, (spec.split(".")[0].split(":")[0],), "MODEL")
    import timm

    if timm.is_model(spec):
        return timm.create_model(spec, pretrained=False, **kwargs)
    from reverso.frontend.tracing import did_you_mean

    raise OptionError(
        f"MODEL {spec!r} is not a reference model, a timm name, a .safetensors file or "
        f"package.module:factory.{did_you_mean(spec, extra=MODELS)}"
    )


def _input_size(model, args):
    from reverso.frontend.tracing import resolve_input_size

    return resolve_input_size(model, tuple(args.input_size) if args.input_size else None)


def _topdown_options(args) -> dict:
    arrangement = int(args.arrangement) if str(args.arrangement).isdigit() else args.arrangement
    return {
        "arrangement": arrangement,
        "merge": args.merge,
        "upsample": args.upsample,
        "pyramid": args.pyramid,
        "njet": args.njet,
        "merge_width": args.merge_width,
        "memory": args.memory,
    }


def _data(args):
    from reverso.study.data import load

    kwargs = {"size": args.size} if args.size else {}
    if getattr(args, "recipe", None) == "imagenette" and args.data == "image_folder":
        kwargs["recipe"] = "imagenette"  # the recipe's transforms apply as the images are read
    return load(args.data, args.root, **kwargs)


def _models(args) -> dict:
    """The MODEL arguments of a comparison, loaded, by their short labels."""
    return {
        label: _load_model(spec, args)
        for spec, label in zip(args.models, _named(args.models), strict=True)
    }


def _named(specs: list[str]) -> list[str]:
    """Short labels for the models of a comparison."""
    return [Path(s).stem if s.endswith(".safetensors") else _title(s) for s in specs]


def _title(name: str) -> str:
    from reverso.names import title

    return title(name)


def _demo(args) -> int:
    from reverso.demo import run_demo

    results = run_demo(out=args.out, epochs=args.epochs, quick=args.quick)
    return 0 if results["checked"] else 1


def _convert(args) -> int:
    from reverso.convert.saving import save
    from reverso.convert.topdown import topdown
    from reverso.convert.transforms import antialias, njet
    from reverso.study.summary import side_by_side, summary

    model = _load_model(args.model, args)
    size = _input_size(model, args)
    if args.transform == "topdown":
        converted = topdown(model, input_size=size, **_topdown_options(args))
        print(
            converted.code
            if args.code
            else side_by_side(summary(model, size, name=args.model), summary(converted))
        )
    elif args.transform == "njet":
        converted = njet(model, input_size=size)
        print(f"{len(converted.njet_report.layers)} convs became N-Jet convs")
    elif args.transform in ("frames", "steerable", "hierarchical"):
        from reverso.convert import structured

        options = {"frames": {"frame": args.frame}, "steerable": {"unit": args.unit}}
        converted = getattr(structured, args.transform)(
            model, size, **options.get(args.transform, {})
        )
        report = getattr(converted, f"{args.transform}_report", None)
        print(converted.code if args.code or report is None else report)
    else:
        converted = antialias(
            model,
            input_size=size,
            filter_size=args.filter_size,
            variant=args.variant,
            checkpoint=args.official_weights,
        )
        print(
            converted.code
            if args.code
            else f"anti-aliased: {', '.join(converted.antialiased) or 'nothing'}"
        )
    path = save(converted, args.output, input_size=size)
    print(f"saved to {path.resolve()}")
    return 0


def _summary(args) -> int:
    from reverso.convert.network import TopDownNet
    from reverso.convert.topdown import topdown
    from reverso.study.summary import side_by_side, summary

    model = _load_model(args.model, args)
    if isinstance(model, TopDownNet):
        print(summary(model))
        return 0
    size = _input_size(model, args)
    bu = summary(model, size, name=args.model)
    if args.topdown:
        print(side_by_side(bu, summary(topdown(model, input_size=size, **_topdown_options(args)))))
    else:
        print(bu)
    return 0


def _erf(args) -> int:
    from reverso.convert.topdown import topdown
    from reverso.study.erf import erf
    from reverso.study.figures import plot_erfs
    from reverso.study.plotting import check_figure_path
    from reverso.study.receptive import receptive_fields

    check_figure_path(args.output)
    model = _load_model(args.model, args)
    size = _input_size(model, args)
    nets = {_title(args.model): model}
    if args.topdown:
        nets = {f"bottom-up {_title(args.model)}": model}
        nets[f"top-down {_title(args.model)}"] = topdown(
            model, input_size=size, **_topdown_options(args)
        )
    measured = {}
    for label, net in nets.items():
        rf = receptive_fields(net, size)
        print(f"== {label}")
        for name, r in rf.convs():
            print(f"{name:<40} receptive field {r.min:g}..{r.max:g} px, jump {r.jump:g}")
        result = erf(net, size, node=args.node, samples=args.samples, name=label)
        theory = rf[result.node] if result.node in rf.rows else None
        bound = f" (theoretical receptive field {theory.max:g} px)" if theory else ""
        print(
            f"effective receptive field of {result.node}: {result.size}x{result.size} px hold "
            f"{result.mass:.0%} of the gradient{bound}"
        )
        measured[label] = result
    print(f"picture: {plot_erfs(measured, args.output).resolve()}")
    return 0


def _train(args) -> int:
    from reverso.convert.saving import save
    from reverso.convert.topdown import topdown
    from reverso.study.figures import plot_training
    from reverso.study.plotting import check_figure_path
    from reverso.study.train import train

    if args.plot:
        check_figure_path(args.plot)
    model = _load_model(args.model, args)
    data = _data(args)
    label = _title(args.model)
    if args.topdown:
        model = topdown(model, input_size=data.input_size, **_topdown_options(args))
        label = f"top-down {label}"
    result = train(
        model,
        data,
        recipe=args.recipe,
        epochs=args.epochs,
        repeats=args.repeats,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        checkpoint=args.checkpoint,
        keras_init=args.keras_init,
    )
    from reverso.study.distributed import rank_and_world

    if rank_and_world()[0] != 0:  # under torchrun, rank 0 reports and saves
        return 0
    for i, run in enumerate(result.runs):
        print(f"run {i + 1}: test accuracy {run.test_accuracy:.2%} ({run.seconds:.0f}s)")
    print(result)
    if args.plot:
        title = f"Training {label} on {_title(args.data)}"
        print(f"picture: {plot_training({label: result}, args.plot, title=title).resolve()}")
    if args.output:
        print(
            f"saved to {save(result.model.cpu(), args.output, input_size=data.input_size).resolve()}"
        )
    return 0


def _attack(args) -> int:
    from reverso.study.figures import plot_robustness
    from reverso.study.plotting import check_figure_path
    from reverso.study.robustness import robustness

    check_figure_path(args.output)
    data = _data(args)
    reports = {}
    for label, model in _models(args).items():
        report = robustness(
            model,
            data,
            attacks=args.attacks,
            repeats=args.repeats,
            samples=args.samples,
            budget=args.budget,
            levels=args.levels,
            name=label,
        )
        print(report)
        reports[label] = report
    title = f"Robustness on {_title(args.data)} ({args.samples} test images)"
    print(f"picture: {plot_robustness(reports, args.output, title=title).resolve()}")
    return 0


def _gradcam(args) -> int:
    from reverso.study.gradcam import compare_localization, save_overlays
    from reverso.study.plotting import check_figure_path

    check_figure_path(args.output)
    data = _data(args)
    images, labels = data.test_tensors(args.samples)
    models = _models(args)
    layers = dict.fromkeys(models, args.layer) if args.layer else None
    results, cams, index = compare_localization(
        models,
        images,
        labels,
        layers=layers,
        t=args.threshold,
        cam_threshold=args.threshold,
        normalize=data.normalize,
    )
    for label, loc in results.items():
        print(f"{label:<20} layer {cams[label].layer:<28} {loc}")
    picture = save_overlays(
        images[index],
        cams,
        args.output,
        count=args.count,
        labels=labels[index],
        classes=data.classes,
        title=f"Grad-CAM on {_title(args.data)} test images",
    )
    print(f"picture: {picture.resolve()}")
    return 0
