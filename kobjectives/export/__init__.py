"""SavedModel export of trained objectives, with serving signatures.

Export depends on objectives only through the interface documented in
`kobjectives.export.saved_model`: `export_outputs(inputs)`, optionally
`serving_model()` and `backbone`.
"""

from kobjectives.export.saved_model import SERVE_TOKEN_IDS  # noqa: F401
from kobjectives.export.saved_model import SERVING_DEFAULT  # noqa: F401
from kobjectives.export.saved_model import export_saved_model  # noqa: F401
from kobjectives.export.preprocessors import PairTextPreprocessor  # noqa: F401
from kobjectives.export.preprocessors import PromptPreprocessor  # noqa: F401
from kobjectives.export.saved_model import GENERATE  # noqa: F401
from kobjectives.export.generation import TextGenerator  # noqa: F401
from kobjectives.export.generation import Seq2SeqTextGenerator  # noqa: F401
