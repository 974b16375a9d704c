"""Sphinx configuration of the pconv3d documentation site.

Build (from the repository root, after ``pip install -e ".[dev]"``)::

    python -m sphinx -W -b html docs docs/_build/html

The build is offline: no intersphinx inventories are fetched, the theme ships its own assets, notebooks are
rendered from the outputs committed with them (``docs/execute_notebooks.py`` refreshes those), and the API
pages are generated from the docstrings at build time (``docs/api/generated``, not committed).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the checkout, not whichever pconv3d is installed

import pconv3d  # noqa: E402

project = "pconv3d"
author = "pconv3d contributors"
copyright = "pconv3d contributors"
release = version = pconv3d.__version__

extensions = [
    "myst_nb",  # Markdown pages (MyST) and notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # the docstrings are Google style (Args:, Returns:, Raises:)
    "sphinx.ext.viewcode",
    "sphinxarg.ext",  # the `pconv3d` command line, read from its argparse parser
]

exclude_patterns = [
    "_build",
    "**.ipynb_checkpoints",
    "execute_notebooks.py",
    "study/summary.md",  # included by study.md
    "study/issue24/summary.md",  # included by study.md
    "study/issue24/summary_equal_time.md",  # included by study.md
]
templates_path = ["_templates"]

# --- warnings are errors (-W): references into pconv3d/pipelines must resolve --------------------------------
nitpicky = True
# Names of other libraries: there is no offline inventory to resolve them against. Everything else (pconv3d,
# pipelines, a misspelt name) must resolve.
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|monai|numpy|np|nibabel|SimpleITK|sitk|ignite|scipy|matplotlib|yaml|collections|typing|"
               r"typing_extensions|pathlib|os|argparse|logging|types|abc|enum|concurrent|contextlib|functools|"
               r"weakref|tqdm|io|re|json|csv|numbers|builtins|_io)(\..*)?"),
    (r"py:.*", r"(Tensor|Module|Path|PathLike|NdarrayOrTensor|KeysCollection|Optional|Union|Any|Callable|"
               r"Sequence|Mapping|Iterable|Iterator|Hashable|TypeVar|Literal|MetaTensor|DtypeLike|NdarrayTensor|"
               r"ndarray|Namespace|Logger|Engine|Events|Randomizable|MapTransform|Transform|"
               r"ArgumentParser)"),
    (r"py:attr", r"self\..*"),  # in docstrings that MONAI's transforms hand down to ours (``self.R``)
    (r"py:class", r"(optional|callable|array-like|default .*|tensor|sequence|int or .*|.* or None)"),
]

# --- MyST and notebooks ---------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # render the outputs committed with the notebooks; CI runs them through nbmake
nb_merge_streams = True

# the notebooks live in notebooks/ (where nbmake runs them); Sphinx reads only its source folder, so they
# are copied into docs/tutorials/ (git-ignored), rewritten only when they changed
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
_tutorials = DOCS / "tutorials"
_tutorials.mkdir(exist_ok=True)
for _nb in NOTEBOOKS:
    _copy = _tutorials / _nb.name
    if not _copy.exists() or _copy.read_bytes() != _nb.read_bytes():
        shutil.copyfile(_nb, _copy)
for _stale in _tutorials.glob("*.ipynb"):
    if not (ROOT / "notebooks" / _stale.name).exists():
        _stale.unlink()

# --- API reference --------------------------------------------------------------------------------------------
autosummary_generate = True
autosummary_ignore_module_all = True  # find every submodule; the template lists what each __all__ exports
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False


def _assigned_names(module) -> set[str]:
    """Names bound by a top-level assignment in the module's own source."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return set()
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            names.update(sub.id for sub in ast.walk(target) if isinstance(sub, ast.Name))
    return names


def public_names(module) -> list[str]:
    """A module's public names: its ``__all__``, or else its non-underscore names defined in it."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, v in vars(module).items() if not n.startswith("_")
            and not inspect.ismodule(v) and getattr(v, "__module__", module.__name__) == module.__name__]


def modules_of(package) -> list:
    """The package and every module under it, imported."""
    return [package] + [importlib.import_module(i.name) for i in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]


def build_api(package) -> tuple[dict[str, dict[str, list[str]]], dict[str, str]]:
    """For each module of ``package``: what its API page documents in full (``classes``, ``functions``,
    ``data``, ``long_data``: defined in the module) and what it only lists (``reexported``: names documented
    where they are defined); and the aliases, public name -> documented name (``pconv3d.PartialConv3d`` ->
    ``pconv3d.partial_conv.PartialConv3d``)."""
    modules = {m.__name__: m for m in modules_of(package)}
    assigned = {name: _assigned_names(m) for name, m in modules.items()}
    api = {name: {"classes": [], "functions": [], "data": [], "long_data": [], "reexported": []} for name in modules}

    def place(modname, name, obj):
        entry = api[modname]
        if any(name in entry[k] for k in ("classes", "functions", "data", "long_data")):
            return
        kind = ("classes" if inspect.isclass(obj) else "functions" if inspect.isroutine(obj)
                else "long_data" if len(repr(obj)) > 100 else "data")
        entry[kind].append(name)

    aliases = {}
    for modname, module in modules.items():
        for name in public_names(module):
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                home = obj.__name__.rsplit(".", 1)
            elif inspect.isclass(obj) or inspect.isroutine(obj):
                home = [getattr(obj, "__module__", modname), obj.__qualname__]
            elif name in assigned[modname]:
                home = [modname, name]
            else:  # a constant imported from the module of the package that assigns it
                owners = [m for m in modules if m != modname and name in assigned[m] and getattr(modules[m], name, None) is obj]
                home = [owners[0] if owners else modname, name]
            if inspect.ismodule(obj) and obj.__name__ == f"{modname}.{name}":
                pass  # a submodule: it has its own page
            elif home == [modname, name]:
                place(modname, name, obj)
            else:
                canonical = ".".join(home)
                aliases[f"{modname}.{name}"] = canonical
                api[modname]["reexported"].append(canonical)
                if home[0] in api and not inspect.ismodule(obj):
                    place(home[0], home[1], obj)  # documented where it is defined, listed there or not
    # a private base class that public classes defer to for their arguments (``_PartialConvNd``) is
    # documented beside them, so that "see ..." and "Bases: ..." lead somewhere
    for modname, entry in api.items():
        for name in list(entry["classes"]):
            for base in inspect.getmro(getattr(modules[modname], name))[1:]:
                if base.__module__ == modname and base.__name__.startswith("_") and inspect.getdoc(base) \
                        and base.__name__ not in entry["classes"]:
                    entry["classes"].append(base.__name__)
    for modname, entry in api.items():
        # autosummary resolves names against the page's module: name its own submodules relative to it
        entry["reexported"] = [n[len(modname) + 1:] if n.startswith(modname + ".") else n for n in entry["reexported"]]
    return api, aliases


API, ALIASES = build_api(pconv3d)
autosummary_context = {"api_of": API}


def _register_aliases(app, env):
    """Give each re-exported name an inventory entry (and a link target) pointing at its documentation, as
    autodoc's ``:canonical:`` does the other way round, so that ``pconv3d.PartialConv3d`` resolves."""
    py = env.get_domain("py")
    for alias, canonical in ALIASES.items():
        if alias not in py.objects and alias not in py.modules and canonical in py.objects:
            py.objects[alias] = py.objects[canonical]._replace(aliased=True)
    return []


def _lookup(path: str):
    """The object a dotted name reaches by import and attribute access, or None."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for part in parts[i:]:
                obj = getattr(obj, part)
        except AttributeError:
            return None
        return obj
    return None


def _resolve_as_python_would(app, env, node, contnode):
    """A reference that Sphinx cannot find is read the way Python reads the name where the docstring is
    written (the module's namespace, the class's attributes): an object documented elsewhere gets a link to
    its page, an internal one (a private base class, a helper type) is shown as plain text. A name that
    does not exist stays unresolved, and fails the build."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    modname, clsname = node.get("py:module"), node.get("py:class")
    scopes = [f"{modname}.{clsname}" if modname and clsname else None, modname, None]
    for scope in scopes:
        path = f"{scope}.{target}" if scope else target
        if not (path.startswith("pconv3d.") or path.startswith("pipelines.")):
            continue
        obj = _lookup(path)
        if obj is None:
            continue
        home = (f"{obj.__module__}.{obj.__qualname__}" if (inspect.isclass(obj) or inspect.isroutine(obj))
                and hasattr(obj, "__module__") else obj.__name__ if inspect.ismodule(obj) else None)
        py = env.get_domain("py")
        if home and home != path and (home in py.objects or home in py.modules):
            node["reftarget"] = home
            return py.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], home, node, contnode)
        return contnode
    return None


def _no_type_docstring(app, what, name, obj, options, lines):
    """A constant without a doc comment would show its type's docstring (``dict``'s, ``str``'s): drop it."""
    own = type(obj).__doc__
    if what in ("data", "attribute") and lines and isinstance(own, str) and \
            "\n".join(lines).strip() == inspect.cleandoc(own).strip():
        lines.clear()


# --- HTML -----------------------------------------------------------------------------------------------------
smartquotes = False  # command-line options keep their two hyphens

html_theme = "pydata_sphinx_theme"
html_title = "pconv3d"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "footer_start": ["copyright"],
    "footer_end": [],
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"index": [], "getting-started": [], "concepts": []}
html_show_sourcelink = False


def setup(app):
    app.connect("env-updated", _register_aliases)
    app.connect("missing-reference", _resolve_as_python_would)
    app.connect("autodoc-process-docstring", _no_type_docstring)
