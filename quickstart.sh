#!/usr/bin/env bash
# Arkiv in two minutes: build the binary, back up a sample directory twice
# (the second time incrementally), restore it, prove the restore is
# byte-identical, and verify every byte in the repository.
#
# Everything it creates lives under one scratch directory (mktemp -d), printed
# at the start and at the end; nothing else on the machine is touched.
# Set ARKIV_PASSWORD to choose the repository password; otherwise a demo
# password is used and the script says so.
set -euo pipefail

cd "$(dirname "$0")"

step=0
step() {
  step=$((step + 1))
  printf '\n==> %d. %s\n' "$step" "$*"
}

step "Build the release binary"
echo "+ cargo build --release --locked"
cargo build --release --locked
ARKIV="$PWD/target/release/arkiv"
echo "binary: $ARKIV ($("$ARKIV" --version))"

# Print each arkiv command as a user would type it, then run it.
arkiv() {
  echo "+ arkiv $*"
  "$ARKIV" "$@"
}

# `pwd -P` gives the real path: a backup records absolute paths, and the
# restore below recreates them under the target.
SCRATCH=$(cd "$(mktemp -d "${TMPDIR:-/tmp}/arkiv-quickstart.XXXXXX")" && pwd -P)
SAMPLE="$SCRATCH/sample"
REPO="$SCRATCH/repo"
RESTORE="$SCRATCH/restore"
trap 'status=$?; [ $status -eq 0 ] || echo "quickstart.sh: step $step failed (exit $status); everything so far is in $SCRATCH" >&2' EXIT

step "Create a sample directory"
mkdir -p "$SAMPLE/docs/drafts" "$SAMPLE/config"
printf 'Arkiv quickstart sample.\nThis file changes before the second backup.\n' >"$SAMPLE/notes.txt"
printf 'listen = "127.0.0.1:8080"\nworkers = 4\n' >"$SAMPLE/config/app.toml"
printf '# Plan\n\n1. Back up.\n2. Restore.\n3. Check.\n' >"$SAMPLE/docs/plan.md"
printf 'A draft, two directories down.\n' >"$SAMPLE/docs/drafts/idea.txt"
ln -s docs/plan.md "$SAMPLE/plan-link.md"
head -c $((20 * 1024 * 1024)) /dev/urandom >"$SAMPLE/random.bin"
echo "sample: $SAMPLE"
(cd "$SAMPLE" && find . -mindepth 1 | sort | sed 's/^/  /')
echo "  (random.bin is 20 MiB of random data; plan-link.md is a symlink)"

step "Create an encrypted repository"
if [ -z "${ARKIV_PASSWORD:-}" ]; then
  export ARKIV_PASSWORD="arkiv-quickstart-demo"
  echo "ARKIV_PASSWORD is not set: using the demo password '$ARKIV_PASSWORD'."
  echo "Fine for this demo; for real data choose your own and keep it safe."
  shown_password="'$ARKIV_PASSWORD'"
else
  echo "using the password in ARKIV_PASSWORD"
  shown_password='...  # the password you set'
fi
arkiv init --repo "$REPO"

step "First backup: every file is new"
arkiv backup --repo "$REPO" --tag quickstart "$SAMPLE"

step "Change one file and back up again: only that file is read"
echo "A line added after the first backup." >>"$SAMPLE/notes.txt"
echo "appended a line to $SAMPLE/notes.txt"
arkiv backup --repo "$REPO" --tag quickstart "$SAMPLE"

step "List the snapshots"
arkiv snapshots --repo "$REPO"

step "Restore the latest snapshot"
arkiv restore --repo "$REPO" latest --target "$RESTORE"
echo "a snapshot keeps absolute paths, so the sample is back at $RESTORE$SAMPLE"

step "Verify the restore is byte-identical"
echo "+ diff -r --no-dereference $SAMPLE $RESTORE$SAMPLE"
diff -r --no-dereference "$SAMPLE" "$RESTORE$SAMPLE"
echo "identical: same files, same contents, same symlink target"
# Metadata too: type, permissions, modification time (ns) and link target.
list_metadata() { (cd "$1" && find . -printf '%P %y %m %T@ %l\n' | sort); }
echo "+ compare type, mode, mtime and link target of every entry"
diff <(list_metadata "$SAMPLE") <(list_metadata "$RESTORE$SAMPLE")
echo "identical: every entry has the same type, mode, mtime and link target"

step "Check the repository, reading and verifying every byte"
arkiv check --repo "$REPO" --read-data

cat <<EOF

Done. Everything is in $SCRATCH:
  sample data    $SAMPLE
  repository     $REPO
  restored copy  $RESTORE$SAMPLE

Try more (the same password is needed):
  export ARKIV_REPO=$REPO ARKIV_PASSWORD=$shown_password
  $ARKIV ls latest --long
  $ARKIV stats
  $ARKIV key list

Remove it all with: rm -rf $SCRATCH
EOF
