# What every long-running script (stage 0, the screens, quality, the pipeline) shares.
# Sourced from the repository root.

# Issue 10's split of the 22 tasks: stage 1 learns from the upstream tasks; the unseen ones are never shown to it and
# are the ones every table reports. (export/gradient_span.py, which cannot source this, spells the same lists for
# the Python tools.)
UPSTREAM_TASKS="sst2 sst5 subj agnews sarcasm tweet_hate tweet_sentiment tweet_emotion qnli cb cola sms_spam
  banking77 clinc150 tweet_emoji tweet_stance boolq"
UNSEEN_TASKS="mpqa rte mrpc tweet_offensive trec"

# own_copies DIR: copies the release binary, the configuration and the model's files (graphs, manifest, θ⁰,
# tokenizer: what --model reads) into DIR, so that a rebuild, an edit or a re-export cannot swap them mid-run. The
# scripts that use DIR hold a shared lock on DIR/.in-use for their whole run, and the copies are refreshed only by
# a script that finds no other holding it: scripts running together run the same binary and model, and a rebuild
# reaches DIR once they have all ended. Each changed file is replaced by a rename, so no one sees a half-copied file.
own_copies() {
  local dir=$1 model=models/all-MiniLM-L6-v2 file fd
  mkdir -p "$dir/model"
  exec {fd}>> "$dir/.in-use"
  if flock -n -x "$fd"; then
    copy_if_changed target/release/deltaspace "$dir/deltaspace"
    copy_if_changed config/deltaspace.toml "$dir/deltaspace.toml"
    for file in "$model"/*; do
      if [ -f "$file" ]; then copy_if_changed "$file" "$dir/model/${file##*/}"; fi
    done
    flock -s "$fd"
  else
    flock -s "$fd"  # after any refresh under way
    if ! cmp -s target/release/deltaspace "$dir/deltaspace" || ! cmp -s config/deltaspace.toml "$dir/deltaspace.toml"; then
      echo "note: another run uses $dir's copies, so this one runs them as they are (the binary or configuration" \
        "there differs from the work tree's); a rebuild reaches $dir once no run uses it" >&2
    fi
  fi
}

# copy_if_changed SOURCE TARGET: TARGET becomes a copy of SOURCE, by a rename, unless it is one already.
copy_if_changed() {
  cmp -s "$1" "$2" && return 0
  cp -p "$1" "$2.$$.new" && mv -f "$2.$$.new" "$2"
}

# claim LOCK [wait]: holds the lock file LOCK (flock) for this shell until `release LOCK` or its exit, and writes
# its pid there for others to show. Without `wait` it fails at once while another process holds LOCK; with it, it
# waits. The kernel drops the lock of a process that dies, so a session that ended leaves nothing to clear.
declare -A lock_fds=()
claim() {
  local fd
  exec {fd}>> "$1"
  local how=-n
  [ "${2:-}" = wait ] && how=--exclusive
  if ! flock "$how" "$fd"; then
    exec {fd}>&-
    return 1
  fi
  echo $$ > "$1"
  lock_fds[$1]=$fd
}

# release LOCK: lets LOCK go (the file stays: deleting it would let a waiter and a newcomer both hold it).
release() {
  local fd=${lock_fds[$1]:-}
  [ -n "$fd" ] || return 0
  flock -u "$fd"
  exec {fd}>&-
  unset "lock_fds[$1]"
}
