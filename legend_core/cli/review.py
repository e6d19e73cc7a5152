"""``legend review`` (a pair's reviews, agreement between annotators) and ``legend user``
(the app's login accounts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from legend_core.cli.common import UserError, admins, db_option, open_store


def cmd_review(args: argparse.Namespace) -> int:
    """Add a verdict to a pair, print its history and label; or annotators' agreement."""
    store = open_store(args)
    if args.agreement:
        return _print_agreement(store, args.dataset)
    if args.pair is None:
        raise UserError("give --pair ID (or --agreement --dataset ID)")
    if args.action:
        if not args.annotator:
            raise UserError("--annotator NAME is required to add a review")
        store.add_review(
            args.pair,
            args.annotator,
            args.action,
            value=args.value,
            note=args.note or "",
            run_id=args.run,
        )
    for review in store.pair_history(args.pair):
        value = "" if review.value is None else f" {review.value:+.4f}"
        note = f"  ({review.note})" if review.note else ""
        run = f"  [run {review.run_id}]" if review.run_id is not None else ""
        print(f"{review.created_at}  {review.annotator}  {review.action}{value}{note}{run}")
    state = store.pair_state(args.pair, args.run, admins=admins())
    label = "swapped" if state.flipped else "as imported"
    by = f", decided by {', '.join(state.decided_by)}" if state.decided_by else ""
    line = f"label: {label} ({state.label_source}{by}; {state.n_verdicts} verdicts)"
    if state.margin is not None:
        line += f"; margin {state.margin:+.4f} (relative to the exported chosen)"
    print(line + ("; flagged" if state.flagged else ""))
    return 0


def _print_agreement(store, dataset_id: int | None) -> int:
    from legend_core.review.annotators import agreement_frame, pairwise_agreement

    if dataset_id is None:
        raise UserError("--agreement needs --dataset ID")
    frame = agreement_frame(pairwise_agreement(store.reviews_frame(dataset_id)))
    if frame.empty:
        print("no two annotators reviewed the same pairs yet")
    else:
        print(frame.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    """Add or replace a login account, or switch blind review."""
    import getpass

    from legend_core.app.auth import add_user, auth_file, set_blind_review

    path = Path(args.file) if args.file else auth_file()
    if path is None:
        raise UserError("give --file USERS.json (or set LEGEND_AUTH_FILE)")
    if args.user_command == "blind-review":
        set_blind_review(path, args.state == "on")
        print(f"blind review {args.state} in {path}")
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
    add_user(path, args.username, password, args.role, name=args.name or "")
    print(f"user {args.username} ({args.role}) saved in {path}")
    return 0


def add_parsers(commands: Any) -> None:
    """The ``review`` and ``user`` commands."""
    from legend_core.app.auth import ROLES
    from legend_core.review.policy import ACTIONS

    review = commands.add_parser(
        "review",
        help="list or add reviews of a pair",
        description="Verdicts are about the pair as imported: accept (the imported chosen is "
        "safer), flip (the rejected is safer), override (a margin, its sign says which is "
        "safer), withdraw (take your verdict back); flag/unflag are apart. Your latest "
        "verdict replaces your earlier ones. Several annotators: see README, Reviews.",
    )
    review.add_argument("--pair", type=int)
    review.add_argument("--action", choices=list(ACTIONS))
    review.add_argument(
        "--value", type=float, help="the margin, for override (as imported; sign = safer side)"
    )
    review.add_argument(
        "--run",
        type=int,
        default=None,
        help="the margin run the pair was seen in: an override is read on its direction's "
        "scale (without it, on every run's); the summary uses its computed margin",
    )
    review.add_argument("--annotator")
    review.add_argument("--note")
    review.add_argument("--agreement", action="store_true", help="agreement between annotators")
    review.add_argument("--dataset", type=int, help="the data set, for --agreement")
    db_option(review)
    review.set_defaults(handler=cmd_review)

    user = commands.add_parser("user", help="accounts for the app's login mode")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    add = user_commands.add_parser("add", help="add or replace a user")
    add.add_argument("username")
    add.add_argument("--role", choices=ROLES, default="annotator")
    add.add_argument("--name", default="")
    add.add_argument("--file", default=None, help="users file (default $LEGEND_AUTH_FILE)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    blind = user_commands.add_parser("blind-review", help="hide others' margins until reviewed")
    blind.add_argument("state", choices=["on", "off"])
    blind.add_argument("--file", default=None)
    user.set_defaults(handler=cmd_user)
