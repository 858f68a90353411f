# What every long-running script (stage 0, the screens, quality, the pipeline) shares.
# Sourced from the repository root.

# own_copies DIR: copies the release binary, the configuration and the model into DIR, so that a rebuild, an edit or
# a re-export cannot swap them mid-run. The binary is replaced by a rename, so this works while another long run is
# executing the old copy ("Text file busy" otherwise); the model directory is copied only when it differs.
own_copies() {
  local dir=$1 model=models/all-MiniLM-L6-v2
  mkdir -p "$dir"
  cp target/release/deltaspace "$dir/deltaspace.new" && mv -f "$dir/deltaspace.new" "$dir/deltaspace"
  cp config/deltaspace.toml "$dir/deltaspace.toml.new" && mv -f "$dir/deltaspace.toml.new" "$dir/deltaspace.toml"
  if ! diff -rq "$model" "$dir/model" > /dev/null 2>&1; then
    rm -rf "$dir/model" && cp -r "$model" "$dir/model"
  fi
}
