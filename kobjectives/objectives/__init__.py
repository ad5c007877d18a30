"""`keras.Model` subclasses, one objective each."""

from kobjectives.objectives.masked_language_model import MaskedLanguageModel
