# Sourced by the benchmark scripts. `scratch_dir NAME GIB` makes $dir, a scratch directory beside
# the repository (so on the disk under test), and checks that GIB GiB are free there; when the
# script exits, the processes it started and still names ($pid, and those in $pids) are killed
# and $dir is removed. `still_running`, in every wait for a broker, ends the script with the
# logs in $dir when one of those processes has stopped, instead of waiting for ever.
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
still_running() {
  local started
  for started in $pid ${pids[@]+"${pids[@]}"}; do
    if ! kill -0 "$started" 2>/dev/null; then
      echo "process $started, started by this script, has stopped; the logs:" >&2
      tail -n 20 "$dir"/*log* >&2 2>/dev/null || true
      exit 1
    fi
  done
}
remove_scratch() {
  local started
  for started in $pid ${pids[@]+"${pids[@]}"}; do kill -9 "$started" 2>/dev/null || true; done
  sleep 1
  rm -rf "$dir"
}
