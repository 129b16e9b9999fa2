#!/bin/sh
# redis-cluster.sh start DIR [BASE_PORT] | stop DIR
# A Redis Cluster of 3 masters and 3 replicas on loopback, for make bench: ports BASE..BASE+5
# (cluster bus +10000), files in DIR. start prints the seed list (host:port,...) once every
# replica has its first copy; stop kills the nodes and removes DIR.
set -e
cmd=$1 dir=$2 base=${3:-21000}
case "$cmd" in
start)
	mkdir -p "$dir"
	ports=""
	for i in 0 1 2 3 4 5; do
		p=$((base + i))
		cat > "$dir/$p.conf" <<CONF
port $p
bind 127.0.0.1
cluster-enabled yes
cluster-config-file nodes-$p.conf
cluster-node-timeout 1000
cluster-require-full-coverage no
appendonly no
save ""
dir $dir
protected-mode no
repl-diskless-sync-delay 0
daemonize yes
pidfile $dir/$p.pid
logfile $dir/$p.log
CONF
		redis-server "$dir/$p.conf"
		ports="$ports 127.0.0.1:$p"
	done
	for i in 0 1 2 3 4 5; do
		until redis-cli -p $((base + i)) ping >/dev/null 2>&1; do sleep 0.05; done
	done
	redis-cli --cluster create $ports --cluster-replicas 1 --cluster-yes >/dev/null
	for i in 0 1 2 3 4 5; do
		until redis-cli -p $((base + i)) info replication | grep -Eq 'role:master|master_link_status:up'; do
			sleep 0.05
		done
		until redis-cli -p $((base + i)) cluster info | grep -q cluster_state:ok; do sleep 0.05; done
	done
	echo "127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
	;;
stop)
	for f in "$dir"/*.pid; do
		[ -f "$f" ] || continue
		pid=$(cat "$f")
		kill -9 "$pid" 2>/dev/null || true
		while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
	done
	rm -rf "$dir"
	;;
*)
	echo "usage: $0 start DIR [BASE_PORT] | stop DIR" >&2
	exit 2
	;;
esac
