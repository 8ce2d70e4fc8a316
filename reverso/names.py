"""Names of reverso's built-in catalogues, importable without torch.

The command line's ``--help`` lists them without importing the modules that define them (those
import torch, timm and foolbox, which takes seconds); a test checks each tuple against its table.
"""

#: the top-down options (``reverso.topdown(arrangement=, merge=, upsample=, pyramid=)``)
ARRANGEMENTS = ("td", "uni", "rev")
MERGES = ("add", "concat", "add_concat")
UPSAMPLE_MODES = ("nearest", "bilinear", "blur")
PYRAMIDS = ("gaussian", "gaussian_reflect", "binomial", "cascade")
MEMORY_MODES = (None, "checkpoint", "reversible")
MERGE_WIDTHS = ("unit", "inner")
#: the sibling rewrites' choices (:mod:`reverso.options` holds the records that use them)
NJET_INITS = ("random", "project")
NJET_ROUTES = ("auto", "dense", "separable")
NJET_SIZE_RULES = ("paper", "reference")
#: safe-subsampling curves: the paper's (1/2)^(sigma/r), the code's 1 / max(1, 2^sigma / r)
NJET_SUBSAMPLING_RULES = ("paper", "code")
PAD_MODES = ("reflect", "replicate", "zeros")
ANTIALIAS_VARIANTS = ("reverso", "official")
FRAMES = ("pixel", "gauss9", "framelet", "naive")
FRAME_CHOICES = (*FRAMES, "alternate")
STEERABLE_UNITS = ("conv", "block")
STEERABLE_POSES = ("per_in", "shared")
STEERABLE_MODES = ("angle", "free")
HCNN_VARIANTS = ("plus", "linear")
HCNN_HEADS = ("keep", "readout")
#: reference models of the papers (``reverso.models.MODELS``)
MODELS = (
    "lenet_fc", "nin_light", "nin", "resnet32_preact", "resnet18_imagenette", "irevnet_imagenet",
    "irevnet_cifar",
)  # fmt: skip
#: datasets ``reverso.data.load`` knows (``reverso.data.DATASETS``)
DATASETS = ("mnist5k", "digits", "mnist", "fashion_mnist", "cifar10", "image_folder")
#: the top-down paper's attacks (``reverso.study.attacks.ATTACKS``)
ATTACKS = (
    "gaussian_noise",
    "uniform_noise",
    "blended_noise",
    "salt_and_pepper",
    "pointwise",
    "single_pixel",
    "gaussian_blur",
    "contrast",
    "spatial",
    "shifts",
)


def close_matches(name: str, choices, n: int = 3) -> list[str]:
    """The ``n`` entries of ``choices`` a typo of ``name`` could explain, closest first: at most a
    third of the name's characters away by edit distance, or the name cut short. A name longer
    than 100 characters is no typo of a short one (and would cost seconds): none."""
    if len(name) > 100:
        return []
    name = name.lower()
    limit = max(1, len(name) // 3)

    def common_prefix(c: str) -> int:
        return next(
            (i for i, (x, y) in enumerate(zip(name, c, strict=False)) if x != y),
            min(len(name), len(c)),
        )

    scored = []
    for choice in choices:
        c = choice.lower()
        d = edit_distance(name, c)
        if d <= limit or (len(name) >= 3 and c.startswith(name)):
            scored.append((d, -common_prefix(c), choice))
    return [c for *_, c in sorted(scored)[:n]]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions of one character."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


#: how figures and reports name things, in words
TITLES = {
    # datasets
    "mnist5k": "MNIST-5k",
    "digits": "scikit-learn digits",
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "image_folder": "image folder",
    # reference models
    "lenet_fc": "LeNetFC",
    "nin_light": "NIN-light",
    "nin": "NIN",
    "resnet32_preact": "pre-activation ResNet-32",
    "resnet18_imagenette": "ResNet-18 (Imagenette)",
    # attacks
    "gaussian_noise": "additive Gaussian noise",
    "uniform_noise": "additive uniform noise",
    "blended_noise": "blended uniform noise",
    "salt_and_pepper": "salt-and-pepper noise",
    "pointwise": "pointwise attack",
    "single_pixel": "single-pixel attack",
    "gaussian_blur": "Gaussian blur",
    "contrast": "contrast reduction",
    "spatial": "rotations and translations",
    "shifts": "shifts",
}


def title(name: str) -> str:
    """``name`` (a dataset, reference model or attack) in words; other names as they are."""
    return TITLES.get(name, name)
