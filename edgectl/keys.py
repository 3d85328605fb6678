"""`edgectl keys`: Ed25519 signing keys for bundles."""

from __future__ import annotations

from pathlib import Path

import typer

keys_app = typer.Typer(help="Manage bundle signing keys.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def generate(
    out: Path = typer.Option(
        ..., "--out", help="Folder for signing.key (private, mode 0600) and signing.pub."
    ),
    name: str = typer.Option("signing", "--name", help="File name stem of the key pair."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Generate an Ed25519 key pair; an existing key is never overwritten."""
    from edgebundle import generate_keypair, key_id, load_public_key
    from edgectl.output import console, emit_json

    private, public = generate_keypair(out, name)
    kid = key_id(load_public_key(public))
    if as_json:
        emit_json("keys", {"private_key": str(private), "public_key": str(public), "key_id": kid})
    else:
        console.print(
            f"private key: {private}  (keep it secret; mode 0600)\npublic key:  {public}\nkey id:      {kid}"
        )
