{{/* Names, labels and the pieces several templates share. */}}

{{- define "tierserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tierserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tierserve.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tierserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "tierserve.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "tierserve.fullname" .)) -}}
{{- end -}}

{{- define "tierserve.redisHost" -}}
{{- printf "%s-redis" (include "tierserve.fullname" .) -}}
{{- end -}}

{{- define "tierserve.routerName" -}}
{{- printf "%s-router" (include "tierserve.fullname" .) -}}
{{- end -}}

{{/* KubeRay names the head's Service <RayCluster>-head-svc. */}}
{{- define "tierserve.headService" -}}
{{- printf "%s-head-svc" (include "tierserve.fullname" .) -}}
{{- end -}}

{{/* The Ray custom resource that pins a pool's replicas to its worker group. */}}
{{- define "tierserve.poolResource" -}}
{{- printf "tierserve-%s" . -}}
{{- end -}}

{{/* Pools in a fixed order: the enabled ones. */}}
{{- define "tierserve.enabledPools" -}}
{{- $names := list -}}
{{- range $name := list "prefill" "decode" "colocated" "attention" -}}
{{- if (index $.Values.pools $name).enabled -}}{{- $names = append $names $name -}}{{- end -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{/* Replicas a worker pod of a pool holds: gpus / gpusPerReplica, or for a CPU pool
cpu / cpusPerReplica (cpu a plain or milli quantity). */}}
{{- define "tierserve.replicasPerPod" -}}
{{- $p := . -}}
{{- if gt (int $p.gpusPerReplica) 0 -}}
{{- div (int $p.workers.gpus) (int $p.gpusPerReplica) -}}
{{- else if gt (float64 $p.cpusPerReplica) 0.0 -}}
{{- $cpu := toString $p.workers.cpu -}}
{{- $cores := ternary (divf (trimSuffix "m" $cpu | float64) 1000) (float64 $cpu) (hasSuffix "m" $cpu) -}}
{{- floor (divf $cores $p.cpusPerReplica) | int -}}
{{- else -}}1{{- end -}}
{{- end -}}

{{- define "tierserve.checks" -}}
{{- $pools := splitList "," (include "tierserve.enabledPools" .) | compact -}}
{{- if and (has "colocated" $pools) (or (has "prefill" $pools) (has "decode" $pools)) -}}
{{- fail "pools: enable prefill + decode or colocated, not both" -}}
{{- end -}}
{{- if not (or (has "colocated" $pools) (and (has "prefill" $pools) (has "decode" $pools))) -}}
{{- fail "pools: enable prefill and decode, or colocated" -}}
{{- end -}}
{{- range $name := $pools -}}
{{- $p := index $.Values.pools $name -}}
{{- $perPod := int (include "tierserve.replicasPerPod" $p) -}}
{{- if lt $perPod 1 -}}
{{- fail (printf "pools.%s: a worker pod (%v GPUs, %v CPUs) cannot hold a replica (%v GPUs, %v CPUs)" $name $p.workers.gpus $p.workers.cpu $p.gpusPerReplica $p.cpusPerReplica) -}}
{{- end -}}
{{- if gt (int $p.replicas) (mul $perPod (int $p.workers.maxReplicas)) -}}
{{- fail (printf "pools.%s: %d replicas at %d per pod need %d pods, more than workers.maxReplicas (%d)" $name (int $p.replicas) $perPod (div (add (int $p.replicas) (sub $perPod 1)) $perPod) (int $p.workers.maxReplicas)) -}}
{{- end -}}
{{- if or (lt (int $p.workers.replicas) (int $p.workers.minReplicas)) (gt (int $p.workers.replicas) (int $p.workers.maxReplicas)) -}}
{{- fail (printf "pools.%s: workers.replicas must lie within [minReplicas, maxReplicas]" $name) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.ncclTests.enabled (ne (len .Values.ncclTests.between) 2) -}}
{{- fail "ncclTests.between: name two pools" -}}
{{- end -}}
{{- end -}}

{{/* The cluster config (cluster/config.py) the router reads from the ConfigMap. */}}
{{- define "tierserve.clusterConfig" -}}
{{- $c := .Values.config -}}
{{- $pools := dict -}}
{{- range $name := splitList "," (include "tierserve.enabledPools" .) | compact -}}
{{- $p := index $.Values.pools $name -}}
{{- $hw := dict "num_gpus" $p.gpusPerReplica "num_cpus" $p.cpusPerReplica "resources" (dict (include "tierserve.poolResource" $name) 1) -}}
{{- $pool := dict "replicas" $p.replicas "hardware" $hw -}}
{{- if $p.engine -}}{{- $_ := set $pool "engine" $p.engine -}}{{- end -}}
{{- $_ := set $pools $name $pool -}}
{{- end -}}
{{- $kv := merge (dict "redis_url" (printf "redis://%s:6379/0" (include "tierserve.redisHost" .))) $c.kvstore -}}
{{- $router := merge (dict "host" "0.0.0.0" "http_port" .Values.router.httpPort "grpc_port" .Values.router.grpcPort) $c.router -}}
{{- $out := dict "name" $c.name "model" $c.model "block_size" $c.block_size "load_format" $c.load_format "pools" $pools "kvstore" $kv "router" $router -}}
{{- if $c.dtype -}}{{- $_ := set $out "dtype" $c.dtype -}}{{- end -}}
{{- if $c.max_model_len -}}{{- $_ := set $out "max_model_len" $c.max_model_len -}}{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{- define "tierserve.secretEnv" -}}
{{- $ := index . 0 -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef: {name: {{ include "tierserve.secretName" $ }}, key: {{ index . 2 }}}
{{- end -}}
