"""Secret values, the one redactor, and where credentials come from (env, file, generated)."""

from orchestrator.secrets.sources import (
    CredentialSource,
    EnvPassword,
    FilePassword,
    GeneratedPassword,
    PasswordBook,
    PasswordSource,
    generated_output_problem,
    read_source,
    write_generated_passwords,
)
from orchestrator.secrets.values import Redactor, Secret

__all__ = [
    "CredentialSource",
    "EnvPassword",
    "FilePassword",
    "GeneratedPassword",
    "PasswordBook",
    "PasswordSource",
    "Redactor",
    "Secret",
    "generated_output_problem",
    "read_source",
    "write_generated_passwords",
]
