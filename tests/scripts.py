"""Import a runnable script (an example or a benchmark) as a module, for smoke tests."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).parent.parent


def load_script(folder: str, name: str):
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
