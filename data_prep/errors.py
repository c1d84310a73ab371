"""The errors that mean "your input or options are wrong": the CLI prints their message instead of a traceback."""

from __future__ import annotations

from data_prep.languages import LanguageNameError
from data_prep.manifest import ManifestError
from data_prep.readers import RawInputError
from data_prep.stats import StatsError
from data_prep.tokenize import PrepError
from data_prep.tokenizer import TokenizerError
from data_prep.udhr import UdhrError
from mmbert_train.locks import LockHeldError

USER_ERRORS: tuple[type[BaseException], ...] = (
    LanguageNameError,
    ManifestError,
    RawInputError,
    PrepError,
    TokenizerError,
    StatsError,
    UdhrError,
    FileExistsError,
    LockHeldError,
)
