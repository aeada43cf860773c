"""``fvlm lookup``: which study is ``st_...``? Pseudonym -> folder, StudyInstanceUID, PatientID, accession.

Reads the private identity map ``fvlm convert`` writes (``privacy.identity_map``, default
``.fvlm-private/identity.sqlite``; docs/convert.md, Identity). Every pseudonym a message prints (a study
``st_``, a series ``se_``, a patient ``pa_``) can be looked up here, on the machine that holds the map.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "lookup",
        help="map a pseudonym (st_ / se_ / pa_) back to its study folder, UIDs, PatientID and accession",
        description=(
            "Answers 'which study is this?' for the pseudonyms in fvlm's messages and outputs, from the private "
            "identity map `fvlm convert` writes (privacy.identity_map; never part of a DVC output, shard, MLflow "
            "or Prefect). Prints PHI: run it only where that is allowed."
        ),
        examples=[
            ("fvlm lookup st_3624b9fb1c2d4e5f", "one study: folder, StudyInstanceUID, PatientID, accession"),
            ("fvlm lookup pa_0a1b2c3d4e5f6a7b", "every study of a patient"),
            ("fvlm lookup st_3624b9fb --json", "a shortened pseudonym (>= 8 characters), as JSON"),
        ],
    )
    arg(parser, "pseudonyms", nargs="+", metavar="PSEUDONYM", help="st_..., se_... or pa_... (a prefix works)")
    arg(parser, "--map", default=None, key="privacy.identity_map", path=True, help="identity map file")
    arg(parser, "--json", action="store_true", help="print the records as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from core.privacy import lookup_identities, salt_fingerprint
    from fvlm.commands import load_config_from_args

    config = load_config_from_args(args)
    configured = config.privacy.identity_map
    if args.map is None and not configured:
        print("fvlm lookup: privacy.identity_map is null: convert keeps no identity map", file=sys.stderr)
        return 2
    path = config.path(args.map or configured)
    fingerprint = salt_fingerprint(config.privacy.salt)
    found: list[dict[str, object]] = []
    missing: list[str] = []
    for value in args.pseudonyms:
        try:
            records = lookup_identities(path, value)
        except FileNotFoundError as error:
            print(f"fvlm lookup: {error}", file=sys.stderr)
            return 2
        if not records:
            missing.append(value)
        found += [{"query": value, **asdict(record)} for record in records]
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for record in found:
            print(_describe(record, fingerprint))
    for value in missing:
        print(
            f"fvlm lookup: {value}: not in {path} (converted elsewhere, with another privacy.salt, or a NIfTI "
            "input that carries no DICOM identity)",
            file=sys.stderr,
        )
    return 1 if missing else 0


def _describe(record: dict[str, object], fingerprint: str) -> str:
    lines = [f"{record['pseudonym']} ({record['kind']})"]
    if record["kind"] == "series":
        lines.append(f"  study:              {record['study_id']}")
        lines.append(f"  SeriesInstanceUID:  {record['series_instance_uid']}")
        if record.get("series_number") is not None:
            lines.append(f"  SeriesNumber:       {record['series_number']}")
    own = " (no PatientID: the study is its own patient)" if record["own_patient"] else ""
    lines += [
        f"  folder:             {record['folder']}  (relative to the raw DICOM root)",
        f"  study key:          {record['study_key']}",
        f"  StudyInstanceUID:   {record['study_instance_uid'] or '(none)'}",
        f"  PatientID:          {record['patient_id'] or '(none)'}",
        f"  AccessionNumber:    {record['accession_number'] or '(none)'}",
        f"  patient pseudonym:  {record['patient_pseudonym']}{own}",
    ]
    if record["salt_fingerprint"] != fingerprint:
        lines.append("  note: made with another privacy.salt than the current one (its pseudonym may have changed)")
    return "\n".join(lines)
