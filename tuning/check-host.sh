#!/usr/bin/env bash
# Check this host against tuning/README.md for running a Spate broker.
#
# Usage: check-host.sh [--strict] [DATA_DIR]
#   DATA_DIR  the directory Spate will use as --data-dir (default ./spate-data;
#             if it does not exist, its nearest existing parent is checked).
#   --strict  exit 1 if any check prints "warn".
#
# Read-only: this script never changes the system. It prints one line per
# check: "ok", "warn" or "info", what it found, and what to change.
# Limits (ulimit) are those of the shell running this script; a broker started
# by systemd gets LimitMEMLOCK= / LimitNOFILE= from its unit instead.

set -u

strict=0
data_dir=""
for arg in "$@"; do
    case "$arg" in
        --strict) strict=1 ;;
        -h|--help)
            sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*) echo "unknown option: $arg (try --help)" >&2; exit 2 ;;
        *)
            if [ -n "$data_dir" ]; then
                echo "only one DATA_DIR may be given" >&2
                exit 2
            fi
            data_dir="$arg"
            ;;
    esac
done
[ -n "$data_dir" ] || data_dir="./spate-data"

warns=0

report() { # level name message
    [ "$1" = warn ] && warns=$((warns + 1))
    printf '%-4s  %-27s %s\n' "$1" "$2" "$3"
}

# Print the first line of a file, or fail if it is missing or unreadable.
readf() {
    [ -r "$1" ] || return 1
    local line
    IFS= read -r line < "$1" || [ -n "$line" ] || return 1
    printf '%s\n' "$line"
}

# Is $1 a non-negative integer?
is_int() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }

# Compress a list of CPU numbers (one per argument, any order) into "0-3,8".
cpu_ranges() {
    [ "$#" -gt 0 ] || return 0
    local sorted out="" start="" prev="" n
    sorted=$(printf '%s\n' "$@" | sort -n -u)
    for n in $sorted; do
        if [ -z "$start" ]; then
            start=$n
        elif [ "$n" -ne $((prev + 1)) ]; then
            if [ "$start" = "$prev" ]; then out+="$start,"; else out+="$start-$prev,"; fi
            start=$n
        fi
        prev=$n
    done
    if [ "$start" = "$prev" ]; then out+="$start"; else out+="$start-$prev"; fi
    printf '%s\n' "$out"
}

# Expand a kernel CPU list ("0-3,8,10-11") into one number per line.
expand_cpus() {
    local part a b
    local IFS=,
    for part in $1; do
        case "$part" in
            *-*)
                a=${part%-*}; b=${part#*-}; b=${b%%:*}
                if is_int "$a" && is_int "$b"; then seq "$a" "$b"; fi
                ;;
            *) is_int "$part" && echo "$part" ;;
        esac
    done
}

# ---------------------------------------------------------------- CPU layout
# One shard per physical core: the first CPU of each thread-sibling group.
online=$(readf /sys/devices/system/cpu/online || true)
core_reps=()
declare -A seen_core=()
if [ -n "$online" ]; then
    for cpu in $(expand_cpus "$online"); do
        sib=$(readf "/sys/devices/system/cpu/cpu$cpu/topology/thread_siblings_list" || echo "$cpu")
        if [ -z "${seen_core[$sib]+x}" ]; then
            seen_core[$sib]=1
            core_reps+=("$cpu")
        fi
    done
fi
ncpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 0)
pcores=${#core_reps[@]}
[ "$pcores" -gt 0 ] || pcores=$ncpus

if [ "${#core_reps[@]}" -gt 0 ]; then
    suggest=("${core_reps[@]}")
    note="one shard per physical core"
    if [ "${#core_reps[@]}" -ge 8 ]; then
        suggest=("${core_reps[@]:1}")
        note="one shard per physical core, first core left for IRQs/housekeeping"
    fi
    report info cpu-topology "$ncpus CPUs online ($online), $pcores physical cores; $note: spate serve --cores $(cpu_ranges "${suggest[@]}")"
else
    report info cpu-topology "/sys/devices/system/cpu/online not available; list one CPU per physical core in --cores (see lscpu -e)"
fi

# -------------------------------------------------------------------- kernel
krel=$(uname -r)
kmaj=${krel%%.*}
kmin=${krel#*.}; kmin=${kmin%%[!0-9]*}
if is_int "$kmaj" && is_int "$kmin"; then
    if [ "$kmaj" -gt 5 ] || { [ "$kmaj" -eq 5 ] && [ "$kmin" -ge 8 ]; }; then
        report ok kernel "$krel (glommio needs io_uring from Linux >= 5.8)"
    else
        report warn kernel "$krel; glommio needs Linux >= 5.8 for io_uring: upgrade the kernel"
    fi
else
    report info kernel "could not parse version '$krel'; Linux >= 5.8 is required"
fi

if v=$(readf /proc/sys/kernel/io_uring_disabled); then
    case "$v" in
        0) report ok io_uring_disabled "0 (io_uring available to all processes)" ;;
        1) report warn io_uring_disabled "1: only CAP_SYS_ADMIN or members of kernel.io_uring_group may use io_uring; set kernel.io_uring_disabled=0 or run spate in that group" ;;
        *) report warn io_uring_disabled "$v: io_uring is disabled; set kernel.io_uring_disabled=0 (sysctl)" ;;
    esac
else
    report info io_uring_disabled "/proc/sys/kernel/io_uring_disabled not available (kernel without the switch; io_uring is not disabled by it)"
fi

# Try to create (and immediately close) a small io_uring: catches seccomp
# filters and sandboxes that block io_uring_setup. Syscall 425 on these arches.
case "$(uname -m)" in
    x86_64|aarch64)
        if command -v python3 >/dev/null 2>&1; then
            out=$(python3 - 2>&1 <<'EOF'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
fd = libc.syscall(425, 4, params)
if fd < 0:
    print(os.strerror(ctypes.get_errno()))
    sys.exit(1)
os.close(fd)
EOF
            )
            rc=$?
            if [ "$rc" -eq 0 ]; then
                report ok io_uring_setup "a test ring was created and closed"
            else
                report warn io_uring_setup "io_uring_setup failed (${out:-exit $rc}); a seccomp profile, sandbox or sysctl blocks io_uring: allow it for spate"
            fi
        else
            report info io_uring_setup "python3 not available; io_uring_setup test skipped"
        fi
        ;;
    *) report info io_uring_setup "test not available on $(uname -m)" ;;
esac

# -------------------------------------------------------------------- limits
# glommio refuses to start below 512 KiB. Each executor registers 10 MiB of
# I/O memory with each of its 3 rings, charged to RLIMIT_MEMLOCK unless the
# process has CAP_IPC_LOCK: about 30 MiB per shard.
per_shard_kib=30720
ml_soft=$(ulimit -l)
ml_hard=$(ulimit -H -l)
capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status 2>/dev/null)
has_ipc_lock=0
if [ -n "$capeff" ] && [ $(( (0x$capeff >> 14) & 1 )) -eq 1 ]; then
    has_ipc_lock=1
fi
need_kib=$((per_shard_kib * pcores))
if [ "$ml_soft" = unlimited ]; then
    report ok memlock "unlimited (hard $ml_hard)"
elif ! is_int "$ml_soft"; then
    report info memlock "could not read ulimit -l ('$ml_soft')"
elif [ "$ml_soft" -lt 512 ]; then
    report warn memlock "${ml_soft} KiB < 512 KiB: glommio will not start; set LimitMEMLOCK=infinity (systemd) or 'memlock unlimited' in /etc/security/limits.conf"
elif [ "$has_ipc_lock" -eq 1 ]; then
    report ok memlock "${ml_soft} KiB (hard $ml_hard) and this shell has CAP_IPC_LOCK, so registered buffers are not charged; a broker without CAP_IPC_LOCK needs ~${per_shard_kib} KiB per shard (LimitMEMLOCK=infinity)"
elif [ "$ml_soft" -lt "$need_kib" ]; then
    report warn memlock "${ml_soft} KiB (hard $ml_hard) covers registered I/O buffers for $((ml_soft / per_shard_kib)) of $pcores shards (~${per_shard_kib} KiB each); set LimitMEMLOCK=infinity (systemd) or 'memlock unlimited' in limits.conf"
else
    report ok memlock "${ml_soft} KiB (hard $ml_hard) >= ${per_shard_kib} KiB x $pcores shards"
fi

nf_soft=$(ulimit -n)
nf_hard=$(ulimit -H -n)
nr_open=$(readf /proc/sys/fs/nr_open || echo "?")
if [ "$nf_soft" = unlimited ] || { is_int "$nf_soft" && [ "$nf_soft" -ge 65536 ]; }; then
    report ok nofile "$nf_soft (hard $nf_hard, fs.nr_open $nr_open)"
elif is_int "$nf_soft"; then
    report warn nofile "$nf_soft (hard $nf_hard): every connection and open segment takes a descriptor; set LimitNOFILE=1048576 (systemd) or 'nofile 1048576' in limits.conf (max fs.nr_open=$nr_open)"
else
    report info nofile "could not read ulimit -n ('$nf_soft')"
fi

# ----------------------------------------------------------------------- CPU
if [ -n "$online" ] && [ -r "/sys/devices/system/cpu/cpu${online%%[-,]*}/cpufreq/scaling_governor" ]; then
    declare -A gov_cpus=()
    for cpu in $(expand_cpus "$online"); do
        g=$(readf "/sys/devices/system/cpu/cpu$cpu/cpufreq/scaling_governor" || echo "unknown")
        gov_cpus[$g]="${gov_cpus[$g]:-} $cpu"
    done
    for g in "${!gov_cpus[@]}"; do
        # shellcheck disable=SC2086  # word splitting of the CPU list is intended
        list=$(cpu_ranges ${gov_cpus[$g]})
        if [ "$g" = performance ]; then
            report ok cpu-governor "performance on CPUs $list"
        else
            report warn cpu-governor "$g on CPUs $list; set performance: cpupower frequency-set -g performance"
        fi
    done
else
    report info cpu-governor "cpufreq not available (no /sys/devices/system/cpu/cpu*/cpufreq; e.g. a VM): nothing to set here"
fi

cmdline=$(cat /proc/cmdline 2>/dev/null || true)
cmd_param() { # print the value of kernel parameter $1 from /proc/cmdline
    local tok
    for tok in $cmdline; do
        case "$tok" in "$1="*) printf '%s\n' "${tok#*=}"; return 0 ;; esac
    done
    return 1
}
isol=$(cmd_param isolcpus || true)
nohz=$(cmd_param nohz_full || true)
rcun=$(cmd_param rcu_nocbs || true)
if [ -n "$isol" ]; then
    missing=""
    [ -n "$nohz" ] || missing+=" nohz_full"
    [ -n "$rcun" ] || missing+=" rcu_nocbs"
    msg="isolcpus=$isol nohz_full=${nohz:-unset} rcu_nocbs=${rcun:-unset}; pin shards (--cores) to these CPUs"
    [ -z "$missing" ] || msg+="; consider adding$missing with the same list"
    report ok isolcpus "$msg"
elif [ "$pcores" -ge 8 ]; then
    report warn isolcpus "not set on a $pcores-core host; add isolcpus=, nohz_full=, rcu_nocbs= for the shard cores to the kernel command line"
else
    report info isolcpus "not set; optional, and on $pcores cores best left off (the OS needs somewhere to run)"
fi

if pgrep -x irqbalance >/dev/null 2>&1; then
    banned=""
    for f in /etc/default/irqbalance /etc/sysconfig/irqbalance; do
        [ -r "$f" ] || continue
        b=$(sed -n 's/^[[:space:]]*\(IRQBALANCE_BANNED_CPU[A-Z]*=.*\)/\1/p' "$f" | tail -n 1)
        case "$b" in *=|*=\"\"|*=\'\'|"") ;; *) banned="$b ($f)" ;; esac
    done
    if [ -n "$banned" ]; then
        report ok irqbalance "running with $banned; shard cores must be inside the banned set"
    else
        report warn irqbalance "running and may move IRQs onto shard cores; stop it (systemctl disable --now irqbalance) or set IRQBALANCE_BANNED_CPULIST=<shard cores>"
    fi
else
    report ok irqbalance "not running; set NIC IRQ affinity by hand in /proc/irq/*/smp_affinity_list"
fi

# ---------------------------------------------------------------------- disk
check_dir=$data_dir
while [ ! -e "$check_dir" ]; do
    parent=$(dirname -- "$check_dir")
    [ "$parent" != "$check_dir" ] || break
    check_dir=$parent
done
if [ "$check_dir" != "$data_dir" ]; then
    report info data-dir "$data_dir does not exist; checking $check_dir instead"
fi

src="" fstype="" opts="" majmin=""
if command -v findmnt >/dev/null 2>&1; then
    src=$(findmnt -n -o SOURCE -T "$check_dir" 2>/dev/null | head -n 1)
    fstype=$(findmnt -n -o FSTYPE -T "$check_dir" 2>/dev/null | head -n 1)
    opts=$(findmnt -n -o OPTIONS -T "$check_dir" 2>/dev/null | head -n 1)
    majmin=$(findmnt -n -o MAJ:MIN -T "$check_dir" 2>/dev/null | head -n 1 | tr -d ' ')
fi
if [ -z "$src" ] || [ -z "$fstype" ]; then
    mnt=$(df -P -- "$check_dir" 2>/dev/null | awk 'NR == 2 {print $6}')
    [ -n "$src" ] || src=$(df -P -- "$check_dir" 2>/dev/null | awk 'NR == 2 {print $1}')
    if [ -n "$mnt" ] && [ -r /proc/mounts ]; then
        line=$(awk -v m="$mnt" '$2 == m {l = $0} END {print l}' /proc/mounts)
        [ -n "$fstype" ] || fstype=$(printf '%s\n' "$line" | awk '{print $3}')
        [ -n "$opts" ] || opts=$(printf '%s\n' "$line" | awk '{print $4}')
    fi
fi
src=${src%%\[*}   # btrfs shows /dev/sda1[/subvol]

# Block device name under /sys/class/block, then the whole disk for a partition.
dev=""
if [ -n "$src" ] && [ -e "$src" ]; then
    cand=$(basename -- "$(readlink -f -- "$src")")
    [ -e "/sys/class/block/$cand" ] && dev=$cand
fi
if [ -z "$dev" ] && [ -n "$majmin" ] && [ -e "/sys/dev/block/$majmin" ]; then
    dev=$(basename -- "$(readlink -f -- "/sys/dev/block/$majmin")")
fi
disk=$dev
if [ -n "$dev" ] && [ -e "/sys/class/block/$dev/partition" ]; then
    disk=$(basename -- "$(dirname -- "$(readlink -f -- "/sys/class/block/$dev")")")
fi

case "$fstype" in
    xfs|ext4) report ok filesystem "$fstype on ${src:-?} for $check_dir (O_DIRECT supported)" ;;
    "") report info filesystem "filesystem of $check_dir not available" ;;
    *) report warn filesystem "$fstype on ${src:-?} for $check_dir; put the data dir on xfs or ext4 (O_DIRECT segment files)" ;;
esac

if [ -n "$opts" ]; then
    case ",$opts," in
        *,noatime,*) report ok mount-options "noatime ($opts)" ;;
        *) report warn mount-options "no noatime ($opts): reads of segments written since the last access update inode atime; mount with -o noatime" ;;
    esac
else
    report info mount-options "mount options of $check_dir not available"
fi

if [ -n "$disk" ] && [ -d "/sys/class/block/$disk/queue" ]; then
    q=/sys/class/block/$disk/queue
    slaves=""
    for s in "/sys/class/block/$disk/slaves/"*; do
        [ -e "$s" ] && slaves+="${s##*/} "
    done
    slaves=${slaves% }
    if sched_line=$(readf "$q/scheduler"); then
        sched=$(printf '%s\n' "$sched_line" | sed -n 's/.*\[\([^]]*\)\].*/\1/p')
        [ -n "$sched" ] || sched=$sched_line
        rot=$(readf "$q/rotational" || echo "?")
        case "$disk" in
            nvme*)
                if [ "$sched" = none ]; then
                    report ok io-scheduler "$disk: none"
                else
                    report warn io-scheduler "$disk: $sched; NVMe should use none: echo none > $q/scheduler (persist with a udev rule)"
                fi
                ;;
            *)
                if [ "$sched" = bfq ]; then
                    report warn io-scheduler "$disk: bfq (highest per-I/O CPU cost); use none (fast SSD/virtual disk) or mq-deadline: echo none > $q/scheduler"
                else
                    report info io-scheduler "$disk: $sched (rotational=$rot)${slaves:+, made of: $slaves}; none suits NVMe and fast SSDs, mq-deadline is fine for SATA SSDs"
                fi
                ;;
        esac
    else
        report info io-scheduler "$q/scheduler not available"
    fi
    if msk=$(readf "$q/max_sectors_kb"); then
        hw=$(readf "$q/max_hw_sectors_kb" || echo "?")
        if [ "$msk" -ge 512 ] 2>/dev/null; then
            report ok max_sectors_kb "$disk: $msk KiB (hardware max $hw KiB); Spate reads in 512 KiB pieces, which this allows"
        else
            report warn max_sectors_kb "$disk: $msk KiB < 512: glommio 0.9 can hang on reads larger than this and Spate reads 512 KiB pieces; raise it: echo 512 > $q/max_sectors_kb"
        fi
    else
        report info max_sectors_kb "$q/max_sectors_kb not available"
    fi
    # glommio 0.9 reads queue limits from /sys/dev/block/MAJOR:0, which is not
    # always the data disk (second NVMe, virtio or device-mapper device).
    if [ -n "$majmin" ]; then
        gmaj=${majmin%%:*}
        if [ -e "/sys/dev/block/$gmaj:0" ]; then
            gname=$(basename -- "$(readlink -f -- "/sys/dev/block/$gmaj:0")")
            if [ "$gname" != "$disk" ]; then
                gmsk=$(readf "/sys/dev/block/$gmaj:0/queue/max_sectors_kb" || echo "?")
                report info glommio-device "glommio 0.9 takes queue limits from $gmaj:0 ($gname, max_sectors_kb $gmsk), not $disk; keep max_sectors_kb equal on both"
            fi
        else
            report info glommio-device "no /sys/dev/block/$gmaj:0: glommio 0.9 assumes 128 KiB requests for this filesystem"
        fi
    fi
    if lbs=$(readf "$q/logical_block_size"); then
        if is_int "$lbs" && [ "$lbs" -le 4096 ]; then
            report ok logical-block-size "$disk: $lbs bytes (Spate's O_DIRECT I/O is 4096-aligned)"
        else
            report warn logical-block-size "$disk: $lbs bytes > 4096; O_DIRECT writes aligned to 4096 will fail: use a device with 512 or 4096 byte logical blocks"
        fi
    fi
else
    report info io-scheduler "block device for $check_dir (${src:-unknown}) not available under /sys/class/block"
    report info max_sectors_kb "not available (no block device found for $check_dir)"
fi

# -------------------------------------------------------------------- memory
if thp_line=$(readf /sys/kernel/mm/transparent_hugepage/enabled); then
    thp=$(printf '%s\n' "$thp_line" | sed -n 's/.*\[\([^]]*\)\].*/\1/p')
    case "$thp" in
        always) report warn transparent-hugepage "always: page faults and khugepaged compaction can stall shards; echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (persist: transparent_hugepage=madvise)" ;;
        *) report ok transparent-hugepage "${thp:-$thp_line}" ;;
    esac
else
    report info transparent-hugepage "/sys/kernel/mm/transparent_hugepage/enabled not available"
fi

if sw=$(readf /proc/sys/vm/swappiness); then
    swap_on=0
    if [ -r /proc/swaps ] && [ "$(wc -l < /proc/swaps)" -gt 1 ]; then swap_on=1; fi
    if [ "$swap_on" -eq 0 ]; then
        report ok swappiness "$sw, but no swap is active"
    elif is_int "$sw" && [ "$sw" -le 10 ]; then
        report ok swappiness "$sw (swap active)"
    else
        report warn swappiness "$sw with swap active: broker memory may be swapped out; sysctl vm.swappiness=1"
    fi
else
    report info swappiness "/proc/sys/vm/swappiness not available"
fi

# ------------------------------------------------------------------- network
check_min() { # name file minimum fix-value why
    local v
    if v=$(readf "$2"); then
        if is_int "$v" && [ "$v" -ge "$3" ]; then
            report ok "$1" "$v"
        else
            report warn "$1" "$v < $3: $5; sysctl -w $1=$4 (persist in /etc/sysctl.d/)"
        fi
    else
        report info "$1" "$2 not available"
    fi
}
check_min net.core.somaxconn /proc/sys/net/core/somaxconn 4096 4096 \
    "caps the accept backlog, so connection bursts get dropped"
check_min net.core.netdev_max_backlog /proc/sys/net/core/netdev_max_backlog 16384 16384 \
    "packets are dropped when a CPU's input queue overflows (see /proc/net/softnet_stat column 2)"
check_min net.core.rmem_max /proc/sys/net/core/rmem_max 16777216 16777216 \
    "caps receive buffers sockets can ask for with SO_RCVBUF"
check_min net.core.wmem_max /proc/sys/net/core/wmem_max 16777216 16777216 \
    "caps send buffers sockets can ask for with SO_SNDBUF"

for t in tcp_rmem tcp_wmem; do
    if v=$(readf "/proc/sys/net/ipv4/$t"); then
        # shellcheck disable=SC2086  # split "min default max"
        set -- $v
        if [ "$#" -eq 3 ] && is_int "$3" && [ "$3" -ge 16777216 ]; then
            report ok "net.ipv4.$t" "$*"
        else
            report warn "net.ipv4.$t" "$* (max < 16777216): TCP autotuning cannot grow buffers past the max on fast or long links; sysctl -w net.ipv4.$t='$1 $2 16777216'"
        fi
    else
        report info "net.ipv4.$t" "/proc/sys/net/ipv4/$t not available"
    fi
done

echo "----  $warns warning(s)"
if [ "$strict" -eq 1 ] && [ "$warns" -gt 0 ]; then
    exit 1
fi
exit 0
