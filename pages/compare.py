"""`/compare` for Streamlit's v1 multipage mode: hands the request to the router (see app.py)."""
import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent.parent / "app.py"))
