"""What to say when a file imports a module its environment does not have.

Dagster's text for a failed import advises a working directory (``-d``), which means nothing
to someone who dropped a file on a share: nearly always the file uses a package its PEP 723
block does not list. Said first, in the words of the file's own block, naming the PyPI
project where it differs from the module's name (``bs4`` comes from ``beautifulsoup4``).
Standard library only: it runs in every file's environment (``codeserver.py``).
"""

import importlib.util
import os

#: Modules whose PyPI project has another name: the common ones.
PROJECTS = {
    "attr": "attrs",
    "Bio": "biopython",
    "bs4": "beautifulsoup4",
    "cairo": "pycairo",
    "Crypto": "pycryptodome",
    "cv2": "opencv-python",
    "dateutil": "python-dateutil",
    "dns": "dnspython",
    "docx": "python-docx",
    "dotenv": "python-dotenv",
    "faiss": "faiss-cpu",
    "fitz": "PyMuPDF",
    "gi": "PyGObject",
    "git": "GitPython",
    "jose": "python-jose",
    "jwt": "PyJWT",
    "kafka": "kafka-python",
    "ldap": "python-ldap",
    "magic": "python-magic",
    "MySQLdb": "mysqlclient",
    "OpenSSL": "pyOpenSSL",
    "pkg_resources": "setuptools",
    "PIL": "Pillow",
    "pptx": "python-pptx",
    "psycopg2": "psycopg2-binary",
    "serial": "pyserial",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "slugify": "python-slugify",
    "snowflake": "snowflake-connector-python",
    "usb": "pyusb",
    "yaml": "PyYAML",
    "zmq": "pyzmq",
}


def beside(top, folder):
    """Whether ``folder`` holds a module or package named ``top``."""
    return os.path.isfile(os.path.join(folder, f"{top}.py")) or os.path.isdir(
        os.path.join(folder, top)
    )


def advice(module, folder, find_spec=importlib.util.find_spec):
    """What to do about ``No module named 'module'`` raised by a file in ``folder``, or
    ``None`` when it is not a missing package (the module is installed and only a part of it
    is missing, or a module of that name is beside the file: a folder problem after all)."""
    top = (module or "").partition(".")[0]
    if not top or beside(top, folder):
        return None
    try:
        if find_spec(top) is not None:
            return None
    except (ImportError, ValueError):
        return None
    project = PROJECTS.get(top, top)
    named = f" (the module `{top}` comes from the PyPI project `{project}`)"
    return (
        f'`{top}` is not installed in this file\'s environment: add "{project}" to the '
        f"`dependencies` in the file's `# /// script` block{named if project != top else ''}."
    )
