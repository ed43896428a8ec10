"""Rendering cloud-init templates per VPS and checking what comes out."""

from __future__ import annotations

import shutil
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import pytest

from orchestrator import fleet as f
from orchestrator.errors import ManifestError
from orchestrator.secrets import sources
from orchestrator.secrets.values import Secret
from orchestrator.templates.check import check_templates
from orchestrator.templates.render import Templates
from orchestrator.templates.schema import CloudInitSchema, SchemaResult, parse_schema_output
from tests.manifest_support import ROOT_MARKER, cli, write_fleet

PASSWORD = Secret(ROOT_MARKER)
HAS_CLOUD_INIT = shutil.which("cloud-init") is not None
NEEDS_CLOUD_INIT = pytest.mark.skipif(
    not HAS_CLOUD_INIT,
    reason="Debian's cloud-init is not installed, so 'cloud-init schema' cannot run here "
    "(CI installs the cloud-init package)",
)


def inline(text: str, offset: int = 0) -> f.TemplateSource:
    return f.TemplateSource("inline", textwrap.dedent(text), "fleet.yaml", None, offset)


def entry(
    template: f.TemplateSource | None,
    *,
    index: int = 0,
    hostname: str | None = None,
    vars_: dict[str, object] | None = None,
    password: sources.PasswordSource | None = None,
) -> f.VpsEntry:
    return f.VpsEntry(
        id=f"kvm_{index + 1}_{index + 1}",
        hostname=hostname or f"vps-{index + 1:03d}",
        image="cloudinit_debian-bookworm",
        template=template,
        vars=f.freeze(vars_ or {}),
        tags=frozenset({"web", "eu"}),
        group="front",
        protected=False,
        readiness=f.Readiness("tcp", 22, 1200.0),
        root_password=password or sources.EnvPassword("EDIS_ROOT_PASSWORD"),
        index=index,
        where=f"fleet.yaml:{index + 10}",
    )


@pytest.fixture
def templates(tmp_path: Path) -> Templates:
    return Templates(tmp_path, display_dir="fleets")


def test_context(templates: Templates) -> None:
    source = inline(
        """\
        #cloud-config
        hostname: {{ hostname }}
        id: {{ id }} {{ kvm_id }}
        image: {{ image }}
        tags: {{ tags | join(",") }}
        group: {{ group }}
        protected: {{ protected | lower }}
        vars: {{ vars.nested.list | join(" ") }}
        password: {{ root_password | tojson }}
        """
    )
    vps = entry(source, vars_={"nested": {"list": [1, 2]}})
    data = templates.render(vps, PASSWORD)
    assert data.kind == "cloud-config"
    assert data.text.splitlines()[1:] == [
        "hostname: vps-001",
        "id: kvm_1_1 kvm_1_1",
        "image: cloudinit_debian-bookworm",
        "tags: eu,web",
        "group: front",
        "protected: false",
        "vars: 1 2",
        f'password: "{ROOT_MARKER}"',
    ]
    assert data.size == len(data.text.encode())
    assert len(data.sha256) == 64
    assert ROOT_MARKER not in repr(data)
    assert isinstance(vps.vars, MappingProxyType)


def test_trim_blocks_keep_yaml_tidy(templates: Templates) -> None:
    source = inline(
        """\
        #cloud-config
        packages:
          {% for p in vars.packages %}
          - {{ p }}
          {% endfor %}
        """
    )
    data = templates.render(entry(source, vars_={"packages": ["a", "b"]}), PASSWORD)
    assert data.text == "#cloud-config\npackages:\n  - a\n  - b\n"


def test_undefined_variable_names_template_line_and_vps(templates: Templates) -> None:
    source = inline("#cloud-config\nhostname: {{ hostname }}\nfqdn: {{ vars.domain }}\n", 20)
    with pytest.raises(ManifestError) as info:
        templates.render(entry(source, index=3), PASSWORD)
    assert info.value.problems == [
        "fleet.yaml:23:1: vps[3].cloud_init: undefined variable: 'dict object' has no attribute "
        "'domain' (rendered for kvm_4_4 vps-004)"
    ]


def test_password_never_appears_in_errors(templates: Templates) -> None:
    source = inline("#cloud-config\na: {{ vars[root_password] }}\n")
    with pytest.raises(ManifestError) as info:
        templates.render(entry(source), PASSWORD)
    assert ROOT_MARKER not in str(info.value)
    assert "'***'" in str(info.value)


def test_rendered_content_is_not_shown(templates: Templates) -> None:
    source = inline("#cloud-config\nusers: [{{ root_password }}\n")
    with pytest.raises(ManifestError) as info:
        templates.render(entry(source), PASSWORD)
    text = str(info.value)
    assert "not valid YAML" in text
    assert ROOT_MARKER not in text
    assert "users" not in text


def test_sandbox(templates: Templates) -> None:
    source = inline("#cloud-config\na: {{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    with pytest.raises(ManifestError, match=r"not allowed in the template sandbox|undefined"):
        templates.render(entry(source), PASSWORD)


def test_script_is_accepted_as_is(templates: Templates) -> None:
    data = templates.render(entry(inline("#!/bin/sh\necho {{ hostname }} ][ : {\n")), PASSWORD)
    assert data.kind == "script"
    assert data.text == "#!/bin/sh\necho vps-001 ][ : {\n"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Content-Type: multipart/mixed\n", "MIME multipart user data is not supported"),
        ("MIME-Version: 1.0\n", "MIME multipart"),
        ("#include\nhttps://example.net/x\n", "'#include' user data is not supported"),
        ("#cloud-boothook\n#!/bin/sh\n", "'#cloud-boothook'"),
        ("## template: jinja\n#cloud-config\n", "'## template:' rendering"),
        ("\n#cloud-config\n", "(it is empty: check what the template's first lines render to)"),
        ("hostname: x\n", "must start with '#cloud-config'"),
        ("#cloud-config\n- a\n- b\n", "must be a mapping of modules"),
        ("#cloud-config\na: 1\na: 2\n", "duplicate key 'a'"),
    ],
)
def test_refused_documents(templates: Templates, text: str, fragment: str) -> None:
    with pytest.raises(ManifestError) as info:
        templates.render(entry(inline(text)), PASSWORD)
    assert fragment in str(info.value)


def test_empty_cloud_config_is_fine(templates: Templates) -> None:
    assert templates.render(entry(inline("#cloud-config\n")), PASSWORD).kind == "cloud-config"


def test_size_limit(tmp_path: Path) -> None:
    small = Templates(tmp_path, max_bytes=40)
    source = inline("#cloud-config\nhostname: {{ hostname }}\n")
    assert small.render(entry(source), PASSWORD).size == 32
    with pytest.raises(ManifestError, match="rendered user data is 41 bytes, over the limit of 40"):
        small.render(entry(source, hostname="vps-1234567890ab"), PASSWORD)


def test_includes_resolve_next_to_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "users.j2").write_text("users:\n  - name: {{ vars.user }}\n")
    (tmp_path / "parts" / "broken.j2").write_text("a: 1\nb: {{ vars.nope }}\n")
    templates = Templates(tmp_path, display_dir="fleets")
    ok = inline('#cloud-config\n{% include "parts/users.j2" %}')
    assert "name: ops" in templates.render(entry(ok, vars_={"user": "ops"}), PASSWORD).text
    broken = inline('#cloud-config\n{% include "parts/broken.j2" %}')
    with pytest.raises(ManifestError) as info:
        templates.render(entry(broken), PASSWORD)
    assert info.value.problems[0].startswith("fleets/parts/broken.j2:2:1: vps[0].cloud_init:")
    missing = inline('#cloud-config\n{% include "parts/none.j2" %}')
    with pytest.raises(ManifestError, match=r"included template not found: parts/none\.j2"):
        templates.render(entry(missing), PASSWORD)


def test_syntax_error_in_a_file_template(tmp_path: Path) -> None:
    path = tmp_path / "t.j2"
    path.write_text("#cloud-config\n\n{% for x in %}\n")
    source = f.TemplateSource("file", path.read_text(), "fleets/t.j2", path)
    templates = Templates(tmp_path)
    with pytest.raises(ManifestError) as info:
        templates.compile(source)
    assert info.value.problems[0].startswith("fleets/t.j2:3:1: template syntax error:")
    problem = templates.syntax_problem(source, "defaults.cloud_init")
    assert problem is not None
    assert str(problem).startswith("fleets/t.j2:3:1: defaults.cloud_init: template syntax error")


def test_render_without_template(templates: Templates) -> None:
    with pytest.raises(ValueError, match="no cloud-init template"):
        templates.render(entry(None), PASSWORD)


class CountingSchema(CloudInitSchema):
    """A schema checker that records what it was asked instead of running cloud-init."""

    def __init__(self, errors: Sequence[tuple[str, str]] = (), max_documents: int = 0) -> None:
        super().__init__("cloud-init", max_documents=max_documents)
        self.seen: list[str] = []
        self._errors = tuple(errors)

    def check_many(self, texts: Sequence[str]) -> list[SchemaResult]:
        self.seen += list(texts)
        return [SchemaResult(self._errors) for _ in texts]


def test_one_schema_check_per_document_shape(templates: Templates) -> None:
    source = inline(
        "#cloud-config\nhostname: {{ hostname }}\nid: {{ id }}\npw: {{ root_password }}\n"
    )
    generated = sources.GeneratedPassword(Path("out"), "out")
    entries = [entry(source, index=i, password=generated) for i in range(200)]
    book = sources.PasswordBook({})
    schema = CountingSchema()
    report = check_templates(entries, templates, book.root_password, schema=schema)
    assert report.problems == []
    assert report.rendered == 200
    assert len(schema.seen) == 1  # 200 documents, one shape
    # Different vars make different documents: each shape is checked.
    source2 = inline("#cloud-config\nn: {{ vars.n }}\n")
    entries = [entry(source2, index=i, vars_={"n": i}) for i in range(3)]
    schema = CountingSchema()
    check_templates(entries, templates, lambda _: PASSWORD, schema=schema)
    assert len(schema.seen) == 3


def test_schema_checks_are_capped_but_cover_every_template(templates: Templates) -> None:
    first = inline("#cloud-config\nn: {{ vars.n }}\n")
    second = inline("#cloud-config\nm: {{ vars.n }}\n", offset=30)
    entries = [entry(first, index=i, vars_={"n": i}) for i in range(4)]
    entries.append(entry(second, index=4, vars_={"n": 4}))
    schema = CountingSchema(max_documents=2)
    report = check_templates(entries, templates, lambda _: PASSWORD, schema=schema)
    assert schema.seen == ["#cloud-config\nn: 0\n", "#cloud-config\nm: 4\n"]
    assert (report.schema_checked, report.schema_unchecked) == (2, 3)


def test_hostnames_that_change_yaml_type_get_their_own_shape(templates: Templates) -> None:
    source = inline("#cloud-config\nhostname: {{ hostname }}\n")
    entries = [entry(source, index=0, hostname="web"), entry(source, index=1, hostname="on")]
    schema = CountingSchema()
    check_templates(entries, templates, lambda _: PASSWORD, schema=schema)
    assert len(schema.seen) == 2


def test_problems_shared_by_many_vpses_are_folded(templates: Templates) -> None:
    source = inline("#cloud-config\nx: {{ vars.missing }}\n", offset=5)
    entries = [entry(source, index=i) for i in range(50)]
    report = check_templates(entries, templates, lambda _: PASSWORD, schema=None)
    assert [str(p) for p in report.problems] == [
        "fleet.yaml:7:1: vps[0].cloud_init: undefined variable: 'dict object' has no attribute "
        "'missing' (rendered for kvm_1_1 vps-001; the same for 49 more VPSes)"
    ]


def test_schema_errors_are_positioned_and_counted(templates: Templates) -> None:
    source = inline("#cloud-config\nhostname: {{ hostname }}\npower_state:\n  mode: explode\n")
    entries = [entry(source, index=i) for i in range(4)]
    schema = CountingSchema([("power_state.mode", "value is not one of ['poweroff']")])
    report = check_templates(entries, templates, lambda _: PASSWORD, schema=schema)
    assert [str(p) for p in report.problems] == [
        "fleet.yaml:4:9: vps[0].cloud_init: cloud-init schema: power_state.mode: value is not "
        "one of ['poweroff'] (rendered for kvm_1_1 vps-001; the same for 3 more VPSes)"
    ]


def test_schema_output_is_sanitized() -> None:
    output = (
        "Error:\nCloud config schema errors: packages: 5 is not of type 'array', "
        "power_state.mode: 'explode' is not one of ['poweroff', 'reboot', 'halt'], "
        "users.0: {'name': 'ops', 'passwd': '" + ROOT_MARKER + "', 'x': 'a, b: c'} is not valid "
        "under any of the given schemas, foo: Additional properties are not allowed ('x' was "
        "unexpected)\nCloud config schema deprecations: users.0.sudo: DEPRECATED. Use x. y\n"
    )
    result = parse_schema_output(output, ["packages", "power_state", "users", "foo"])
    assert ROOT_MARKER not in repr(result)
    assert result.errors == (
        ("packages", "value is not of type 'array'"),
        ("power_state.mode", "value is not one of ['poweroff', 'reboot', 'halt']"),
        ("users.0", "value is not valid under any of the given schemas"),
        ("foo", "Additional properties are not allowed ('x' was unexpected)"),
    )
    assert result.deprecations == (("users.0.sudo", "DEPRECATED"),)


def test_schema_runs_on_a_private_temporary_file(tmp_path: Path) -> None:
    log = tmp_path / "log"
    fake = tmp_path / "cloud-init"
    fake.write_text(
        "#!/bin/sh\n"
        f'stat -c %a "$3" >> "{log}"\n'
        f'echo "$3" >> "{log}"\n'
        "echo 'Cloud config schema errors: runcmd.0: 1 is not valid under any of the given "
        "schemas'\nexit 1\n"
    )
    fake.chmod(0o755)
    schema = CloudInitSchema(str(fake))
    results = schema.check_many(["#cloud-config\nruncmd: [1]\n", "#cloud-config\nruncmd: [1]\n"])
    assert results[0].errors == (("runcmd.0", "value is not valid under any of the given schemas"),)
    assert schema.runs == 1  # identical documents are checked once
    mode, name = log.read_text().splitlines()
    assert mode == "600"
    assert not Path(name).exists()


def test_schema_failure_is_reported_not_raised(tmp_path: Path) -> None:
    schema = CloudInitSchema(str(tmp_path / "missing-cloud-init"))
    (result,) = schema.check_many(["#cloud-config\n"])
    assert result.failure is not None
    assert result.errors == ()


@NEEDS_CLOUD_INIT
def test_real_cloud_init_schema(tmp_path: Path) -> None:
    schema = CloudInitSchema.find()
    assert schema is not None
    good, bad = schema.check_many(
        [
            "#cloud-config\nhostname: vps-001\npackages: [curl]\n",
            "#cloud-config\npackages: 5\nusers:\n  - {name: ops, passwd: "
            + ROOT_MARKER
            + ", lock_passwd: 7}\n",
        ]
    )
    assert good.errors == ()
    assert ("packages", "value is not of type 'array'") in bad.errors
    assert ROOT_MARKER not in repr(bad)


@NEEDS_CLOUD_INIT
def test_validate_runs_cloud_init_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = """\
        version: 1
        account: {email: a@b.c, password: {env: EDIS_PASSWORD}}
        defaults:
          image: cloudinit_debian-bookworm
          root_password: {env: EDIS_ROOT_PASSWORD}
          cloud_init: templates/bad.yaml.j2
        vps:
          - {id: kvm_1_1, hostname: vps-001}
          - {id: kvm_2_2, hostname: vps-002}
        """
    template = """\
        #cloud-config
        hostname: {{ hostname }}
        chpasswd: {expire: false, users: [{name: root, password: {{ root_password | tojson }}}]}
        power_state:
          mode: explode
        """
    write_fleet(tmp_path, manifest, {"templates/bad.yaml.j2": template})
    # A private temporary folder: other test processes check documents at the same time.
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    leftovers = set(Path(tempfile.gettempdir()).glob("edis-fleet-*.yaml"))
    proc = cli(["validate", "fleet.yaml"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        "templates/bad.yaml.j2:5:9: vps[0].cloud_init: cloud-init schema: power_state.mode: "
        "value is not one of ['poweroff', 'reboot', 'halt'] (rendered for kvm_1_1 vps-001; "
        "the same for 1 more VPS)"
    ) in proc.stderr
    assert ROOT_MARKER not in proc.stderr + proc.stdout
    # With the schema check skipped, the same manifest is accepted.
    proc = cli(["validate", "fleet.yaml", "--no-schema"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # The temporary documents are gone.
    assert set(Path(tempfile.gettempdir()).glob("edis-fleet-*.yaml")) <= leftovers
