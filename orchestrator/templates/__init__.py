"""cloud-init user data: rendering templates in a Jinja2 sandbox and checking the rendered
documents (shape, size, the cloud-init schema when it is installed)."""

from typing import TYPE_CHECKING

from orchestrator.lazy import lazy_exports

# Loaded on first use: the command line reads DEFAULT_SCHEMA_DOCUMENTS without Jinja2/pydantic.
if TYPE_CHECKING:
    from orchestrator.templates.check import TemplateReport, check_templates
    from orchestrator.templates.defaults import DEFAULT_SCHEMA_DOCUMENTS
    from orchestrator.templates.render import Templates
    from orchestrator.templates.schema import CloudInitSchema

__all__ = [
    "DEFAULT_SCHEMA_DOCUMENTS",
    "CloudInitSchema",
    "TemplateReport",
    "Templates",
    "check_templates",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DEFAULT_SCHEMA_DOCUMENTS": "orchestrator.templates.defaults",
        "CloudInitSchema": "orchestrator.templates.schema",
        "TemplateReport": "orchestrator.templates.check",
        "check_templates": "orchestrator.templates.check",
        "Templates": "orchestrator.templates.render",
    },
)
