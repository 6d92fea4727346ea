#!/bin/bash
# Alternating end-to-end runs of two versions of the code on MariaDB, in one sitting: this checkout ("after")
# and an older one ("before", e.g. `git worktree add ../before c4954df`), twice round, four URLs.
# Usage: EAS_BEFORE_CHECKOUT=../before bench/before_after.sh [LOG]
out=${1:-/tmp/before_after.log}
before=${EAS_BEFORE_CHECKOUT:?set EAS_BEFORE_CHECKOUT to a checkout of the older commit, with .venv}
: > "$out"
mysql --protocol=tcp -h127.0.0.1 -uroot -e "CREATE DATABASE IF NOT EXISTS eas_bench_before; CREATE DATABASE IF NOT EXISTS eas_bench_after"
for round in 1 2; do
  for variant in "before mysql+pymysql" "after mysql+pymysql" "after mysql" "after mariadb"; do
    set -- $variant
    dir=$(cd "$(dirname "$0")/.." && pwd); [ "$1" = before ] && dir=$before
    echo "== round $round: $1 $2 (load $(cut -d' ' -f1-3 /proc/loadavg))" >> "$out"
    (cd $dir && EAS_BENCH_MYSQL_URL=$2://root@127.0.0.1:3306/eas_bench_$1 timeout 600 .venv/bin/python bench/end_to_end.py --quick --backend mariadb 2>&1 | tail -12) >> "$out"
  done
done
echo DONE >> "$out"
