"""The errors that mean "your input or options are wrong": the CLI prints their message instead of a traceback."""

from __future__ import annotations

from data_prep.readers import RawInputError
from data_prep.stats import StatsError
from data_prep.tokenize import PrepError
from data_prep.tokenizer import TokenizerError
from data_prep.udhr import UdhrError
from mmbert_train.data.languages import LanguageNameError
from mmbert_train.data.manifest import ManifestError
from mmbert_train.data.mds import MDSError
from mmbert_train.locks import LockHeldError

USER_ERRORS: tuple[type[BaseException], ...] = (
    LanguageNameError,
    ManifestError,
    RawInputError,
    PrepError,
    TokenizerError,
    StatsError,
    MDSError,
    UdhrError,
    FileExistsError,
    LockHeldError,
)
