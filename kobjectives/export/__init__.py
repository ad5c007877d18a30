"""SavedModel export of trained objectives, with serving signatures."""

from kobjectives.export.saved_model import SERVE_TOKEN_IDS
from kobjectives.export.saved_model import SERVING_DEFAULT
from kobjectives.export.saved_model import export_saved_model
from kobjectives.export.embedding import export_embedding_model  # noqa: F401
from kobjectives.export.run_dir import export_run_dir  # noqa: F401
from kobjectives.export.run_dir import load_run  # noqa: F401
