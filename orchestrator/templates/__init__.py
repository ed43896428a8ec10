"""cloud-init user data: rendering templates in a Jinja2 sandbox and checking the rendered
documents (shape, size, the cloud-init schema when it is installed)."""

from orchestrator.templates.check import TemplateReport, check_templates
from orchestrator.templates.render import Templates
from orchestrator.templates.schema import DEFAULT_SCHEMA_DOCUMENTS, CloudInitSchema

__all__ = [
    "DEFAULT_SCHEMA_DOCUMENTS",
    "CloudInitSchema",
    "TemplateReport",
    "Templates",
    "check_templates",
]
