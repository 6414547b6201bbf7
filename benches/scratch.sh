# Sourced by the benchmark scripts. `scratch_dir NAME GIB` makes $dir, a scratch directory beside
# the repository (so on the disk under test), and checks that GIB GiB are free there; when the
# script exits, the processes it started and still names ($pid, and those in $pids) are killed
# and $dir is removed.
pid=
pids=()
scratch_dir() {
  dir=$(mktemp -d -p "$(pwd)" "$1.XXXXXX")
  trap remove_scratch EXIT
  local free_kib
  free_kib=$(df -k --output=avail "$dir" | tail -1)
  if [ "$free_kib" -lt $(($2 * 1024 * 1024)) ]; then
    echo "needs $2 GiB free beside $(pwd), has $((free_kib / 1024)) MiB" >&2
    exit 1
  fi
}
remove_scratch() {
  local started
  for started in $pid ${pids[@]+"${pids[@]}"}; do kill -9 "$started" 2>/dev/null || true; done
  sleep 1
  rm -rf "$dir"
}
