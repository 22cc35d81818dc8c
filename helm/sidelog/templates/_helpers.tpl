{{/* vim: set filetype=mustache: */}}
{{/*
Naming and labels
*/}}
{{- define "sidelog.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sidelog.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sidelog.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sidelog.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidelog.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sidelog.labels" -}}
helm.sh/chart: {{ include "sidelog.chart" . }}
{{ include "sidelog.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: log
app.kubernetes.io/part-of: sidelog
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "sidelog.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sidelog.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The cluster-mode context every shared template takes (a dict, so that the
sidecar helpers can build the same thing from an application chart):
  root       the chart context ($)
  V          the sidelog values (a map)
  name       base name of the group's resources (Services, Secrets)
  namespace  namespace of the pods
  headless   name of the headless Service the pods are reachable through
  stsName    the StatefulSet whose pods are <stsName>-<i> ("" = no stable names)
  replicas   number of pods (members; agent.voters of them vote)
  mode       cluster | sidecar
  workload   Deployment | StatefulSet: the kind of workload the pods belong to
  persistent true when /data is a PVC (false: emptyDir, gone with the pod)
  partition  the StatefulSet's rollingUpdate.partition (-1: none or unknown)
  labels     labels for the resources (a map)
*/}}
{{- define "sidelog.clusterCtx" -}}
{{- $fullname := include "sidelog.fullname" . -}}
{{- $labels := include "sidelog.labels" . | fromYaml -}}
{{- $partition := -1 -}}
{{- if eq (toString .Values.updateStrategy.type) "RollingUpdate" -}}
{{- $partition = dig "rollingUpdate" "partition" -1 .Values.updateStrategy | int -}}
{{- end -}}
{{- toJson (dict "name" $fullname "namespace" .Release.Namespace "headless" (printf "%s-headless" $fullname) "stsName" $fullname "replicas" (int .Values.replicas) "mode" "cluster" "workload" "StatefulSet" "persistent" .Values.persistence.enabled "partition" $partition "labels" $labels) -}}
{{- end }}

{{- define "sidelog.image" -}}
{{- $V := .V -}}
{{- if $V.image.digest -}}
{{- printf "%s@%s" $V.image.repository $V.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $V.image.repository (default .root.Chart.AppVersion $V.image.tag | toString) -}}
{{- end -}}
{{- end }}

{{/* Secret names */}}
{{- define "sidelog.peerTlsSecret" -}}
{{- default (printf "%s-peer-tls" .name) .V.tls.peer.existingSecret -}}
{{- end }}
{{- define "sidelog.clientTlsSecret" -}}
{{- default (printf "%s-client-tls" .name) .V.tls.client.existingSecret -}}
{{- end }}
{{- define "sidelog.aclName" -}}
{{- if .V.acl.existingConfigMap }}{{ .V.acl.existingConfigMap }}{{ else if .V.acl.existingSecret }}{{ .V.acl.existingSecret }}{{ else }}{{ printf "%s-acl" .name }}{{ end -}}
{{- end }}

{{- define "sidelog.clientTlsOn" -}}
{{- if and (eq .mode "cluster") .V.tls.client.enabled }}true{{ end -}}
{{- end }}

{{/* The headless Service's FQDN, and one pod's FQDN. */}}
{{- define "sidelog.headlessFqdn" -}}
{{- printf "%s.%s.svc.%s" .headless .namespace .V.clusterDomain -}}
{{- end }}

{{/*
Membership: --leave-on-terminate ("true"/"false"). agent.leaveOnTerminate
when set; else true where a pod never comes back with its data (a
Deployment, or an emptyDir data volume), false for a StatefulSet with PVCs
(a restarted pod keeps its place with its log).
*/}}
{{- define "sidelog.leaveOnTerminate" -}}
{{- $l := .V.agent.leaveOnTerminate -}}
{{- if kindIs "bool" $l -}}
{{- $l -}}
{{- else -}}
{{- or (eq .workload "Deployment") (not .persistent) -}}
{{- end -}}
{{- end }}

{{/* --failure-domain: "value" (a fixed string), "field" (from the
downward-API env FAILURE_DOMAIN) or "" (none). */}}
{{- define "sidelog.failureDomainSource" -}}
{{- $fd := .V.agent.failureDomain | default dict -}}
{{- if $fd.value }}value{{ else if $fd.fieldPath }}field{{ end -}}
{{- end }}

{{/* A duration such as 30s, 1m30s or 500ms, in milliseconds. */}}
{{- define "sidelog.durationMs" -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 -}}
{{- $ms := 0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d)" (toString .) -1 -}}
{{- $ms = add $ms (mul (regexFind "^[0-9]+" . | int) (get $units (regexReplaceAll "^[0-9]+" . ""))) -}}
{{- end -}}
{{- $ms -}}
{{- end }}

{{/*
Validation of value combinations that the schema cannot express.
*/}}
{{- define "sidelog.validate" -}}
{{- $V := .V -}}
{{- if and $V.acl.enabled (not (include "sidelog.clientTlsOn" .)) -}}
{{- fail "acl.enabled needs tls.client.enabled (ACL subjects are client certificate Common Names) and mode: cluster" -}}
{{- end -}}
{{- if and $V.acl.existingConfigMap $V.acl.existingSecret -}}
{{- fail "acl: set at most one of existingConfigMap and existingSecret" -}}
{{- end -}}
{{- if and (eq $V.discovery.mode "static") (not .stsName) -}}
{{- fail "discovery.mode=static needs pods with stable names (a StatefulSet: pass \"statefulSet\" to the sidecar helpers); use discovery.mode=dns for a Deployment" -}}
{{- end -}}
{{- $ports := list (toString $V.ports.client) (toString $V.ports.peer) (toString $V.ports.http) -}}
{{- if $V.ports.health }}{{ $ports = append $ports (toString $V.ports.health) }}{{ end -}}
{{- if ne (len $ports) (len (uniq $ports)) -}}
{{- fail (printf "ports: client, peer, http and health must be different ports (got %v)" $ports) -}}
{{- end -}}
{{- $live := $V.probes.liveness.grpcService -}}
{{- if and $V.probes.liveness.enabled (not (kindIs "invalid" $live)) (has (toString $live) (list "" "log.v1.Log")) -}}
{{- fail (printf "probes.liveness.grpcService=%q follows the quorum (ready = member + leader known + caught up): a minority partition would restart-loop; use sidelog.live" (toString $live)) -}}
{{- end -}}
{{- if and (eq .mode "sidecar") $V.sidecar.readiness (not $V.ports.health) -}}
{{- fail "sidecar.readiness needs ports.health: in sidecar mode the data ports stay on localhost, which the kubelet cannot reach" -}}
{{- end -}}
{{- if lt (include "sidelog.durationMs" $V.agent.deadMemberTimeout | int) 5000 -}}
{{- fail (printf "agent.deadMemberTimeout=%v: must be at least 5s (a restart or a slow disk must not be taken for a death)" $V.agent.deadMemberTimeout) -}}
{{- end -}}
{{- /* --force-new-cluster makes the pod that gets it the only voter of the
group from its own log: it must reach exactly one survivor, by hand (see
README.md "Lost quorum"), never a whole pod template. */ -}}
{{- $force := false -}}
{{- range $V.agent.extraArgs -}}
{{- if regexMatch "^--force-new-cluster(=(?i:true|t|yes|y|on|1))?$" (toString .) }}{{ $force = true }}{{ end -}}
{{- end -}}
{{- range $V.agent.extraEnv -}}
{{- if and (eq (toString .name) "SIDELOG_FORCE_NEW_CLUSTER") (not (regexMatch "^(?i:false|f|no|n|off|0)$" (toString .value))) }}{{ $force = true }}{{ end -}}
{{- end -}}
{{- if $force -}}
{{- if eq .workload "Deployment" -}}
{{- fail "--force-new-cluster in a Deployment: every pod would get it, and a replaced pod has lost its emptyDir log; it is never right there (README.md \"Lost quorum\")" -}}
{{- else if and (gt (int .replicas) 1) (ne (int .partition) (sub (int .replicas) 1)) -}}
{{- fail (printf "--force-new-cluster must reach exactly one pod, the survivor: set the StatefulSet's replicas to its ordinal + 1 and its rollingUpdate.partition to its ordinal (here %d; %s), and remove the flag again once it leads (README.md \"Lost quorum\")" (sub (int .replicas) 1) (ternary "updateStrategy.rollingUpdate.partition" "pass \"partition\" to the sidecar helpers" (eq .mode "cluster"))) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
Container args: flags of `sidelog agent` (the image's ENTRYPOINT is
["/sidelog", "agent"]). $(POD_NAME) is expanded by the kubelet.
*/}}
{{- define "sidelog.args" -}}
{{- $V := .V -}}
{{- $fqdn := include "sidelog.headlessFqdn" . -}}
{{- $self := ternary (printf "$(POD_NAME).%s" $fqdn) "$(POD_IP)" (ne .stsName "") -}}
{{- $public := ternary "0.0.0.0" "127.0.0.1" (eq .mode "cluster") -}}
{{- $expect := $V.discovery.bootstrapExpect | default .replicas -}}
- --data-dir=/data
- --node-id=$(POD_NAME)
- --client-addr={{ $public }}:{{ $V.ports.client }}
- --http-addr={{ $public }}:{{ $V.ports.http }}
- --peer-addr=0.0.0.0:{{ $V.ports.peer }}
- --advertise-peer-addr={{ $self }}:{{ $V.ports.peer }}
{{- if eq .mode "cluster" }}
- --advertise-client-addr={{ $self }}:{{ $V.ports.client }}
{{- end }}
{{- if $V.ports.health }}
- --health-addr=0.0.0.0:{{ $V.ports.health }}
{{- end }}
{{- if eq $V.discovery.mode "dns" }}
- --discovery=dns
- --dns-name={{ $fqdn }}
{{- else }}
{{- $peers := list }}
{{- range $i := until (int .replicas) }}
{{- $peers = append $peers (printf "%s-%d.%s:%v" $.stsName $i $fqdn $V.ports.peer) }}
{{- end }}
- --join={{ join "," $peers }}
{{- end }}
- --bootstrap-expect={{ $expect }}
- --voters={{ $V.agent.voters }}
- --standbys={{ $V.agent.standbys }}
{{- if $V.agent.logs }}
- --logs={{ join "," $V.agent.logs }}
{{- end }}
- --max-logs={{ $V.agent.maxLogs }}
- --dead-member-timeout={{ $V.agent.deadMemberTimeout }}
{{- $fd := include "sidelog.failureDomainSource" . }}
{{- if eq $fd "value" }}
- {{ printf "--failure-domain=%s" $V.agent.failureDomain.value | quote }}
{{- else if eq $fd "field" }}
- --failure-domain=$(FAILURE_DOMAIN)
{{- end }}
- --leave-on-terminate={{ include "sidelog.leaveOnTerminate" . }}
- --fsync={{ $V.agent.fsync }}
- --segment-max-bytes={{ $V.agent.segmentMaxBytes }}
- --max-record-bytes={{ $V.agent.maxRecordBytes }}
{{- with $V.agent.retentionBytes }}
- --retention-bytes={{ . }}
{{- end }}
{{- with $V.agent.retentionAge }}
- --retention-age={{ . }}
{{- end }}
- --shutdown-grace={{ $V.agent.shutdownGraceSeconds }}s
- --log-format={{ $V.agent.logFormat }}
- --log-level={{ $V.agent.logLevel }}
{{- if $V.tls.peer.enabled }}
- --peer-tls-cert=/tls/peer/tls.crt
- --peer-tls-key=/tls/peer/tls.key
- --peer-tls-ca=/tls/peer/ca.crt
{{- if eq $V.discovery.mode "dns" }}
{{- /* Peers found by DNS are dialed by IP, which the certificate cannot
name: verify every peer against the headless Service's name (the chart's
certificates carry it; an existingSecret must too). */}}
- --peer-tls-server-name={{ $fqdn }}
{{- end }}
{{- end }}
{{- if include "sidelog.clientTlsOn" . }}
- --tls-cert=/tls/client/tls.crt
- --tls-key=/tls/client/tls.key
- --tls-ca=/tls/client/ca.crt
- --tls-reload-interval={{ $V.agent.tlsReloadInterval }}
{{- end }}
{{- if and $V.acl.enabled (include "sidelog.clientTlsOn" .) }}
- --acl-model=/acl/model.conf
- --acl-policy=/acl/policy.csv
{{- end }}
{{- range $V.agent.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{- define "sidelog.env" -}}
{{- $V := .V -}}
{{- /* Plaintext on a non-loopback address needs --insecure: the client and
       HTTP ports in cluster mode without client TLS, or the peer port
       without peer TLS (the health port never does). The image does not
       set SIDELOG_INSECURE; we always set it, true or false, so the pod
       spec says which one we mean. */ -}}
{{- $plainPublic := or (not $V.tls.peer.enabled) (and (eq .mode "cluster") (not (include "sidelog.clientTlsOn" .))) -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- if eq (include "sidelog.failureDomainSource" .) "field" }}
- name: FAILURE_DOMAIN
  valueFrom:
    fieldRef:
      fieldPath: {{ $V.agent.failureDomain.fieldPath | quote }}
{{- end }}
- name: SIDELOG_INSECURE
  value: {{ ternary "true" "false" $plainPublic | quote }}
{{- with $V.agent.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
One probe. Args: a dict with ctx (the context above) and kind
(startup|liveness|readiness). Native gRPC when the probe names a gRPC health
service and plaintext gRPC reaches it on the pod IP: the health port
(--health-addr, plaintext in every mode, the default), or without it the
client port in cluster mode with client TLS off. Else HTTP(S) on the HTTP
port (cluster mode); in sidecar mode without a health port, a TCP check of
the peer listener (bound only after the log is open).
*/}}
{{- define "sidelog.probe" -}}
{{- $ctx := .ctx -}}
{{- $V := $ctx.V -}}
{{- $p := index $V.probes .kind -}}
{{- $clientTls := include "sidelog.clientTlsOn" $ctx -}}
{{- $grpcPort := 0 -}}
{{- $httpPort := 0 -}}
{{- $scheme := "HTTP" -}}
{{- if $V.ports.health -}}
{{- $grpcPort = $V.ports.health -}}
{{- $httpPort = $V.ports.health -}}
{{- else if eq $ctx.mode "cluster" -}}
{{- if not $clientTls }}{{ $grpcPort = $V.ports.client }}{{ end -}}
{{- $httpPort = $V.ports.http -}}
{{- if $clientTls }}{{ $scheme = "HTTPS" }}{{ end -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $p.grpcService)) $grpcPort }}
grpc:
  port: {{ $grpcPort }}
  service: {{ $p.grpcService | quote }}
{{- else if $httpPort }}
httpGet:
  path: {{ $p.httpPath }}
  port: {{ $httpPort }}
  scheme: {{ $scheme }}
{{- else }}
tcpSocket:
  port: {{ $V.ports.peer }}
{{- end }}
periodSeconds: {{ $p.periodSeconds }}
timeoutSeconds: {{ $p.timeoutSeconds }}
failureThreshold: {{ $p.failureThreshold }}
{{- with $p.successThreshold }}
successThreshold: {{ . }}
{{- end }}
{{- end }}

{{/*
The sidelog container (both modes). Args: the context above.
*/}}
{{- define "sidelog.containerSpec" -}}
{{- $V := .V -}}
{{- include "sidelog.validate" . -}}
image: {{ include "sidelog.image" (dict "root" .root "V" $V) }}
imagePullPolicy: {{ $V.image.pullPolicy }}
args:
{{- include "sidelog.args" . | trim | nindent 2 }}
env:
{{- include "sidelog.env" . | trim | nindent 2 }}
ports:
  - name: peer
    containerPort: {{ $V.ports.peer }}
    protocol: TCP
{{- if eq .mode "cluster" }}
  - name: client
    containerPort: {{ $V.ports.client }}
    protocol: TCP
  - name: http
    containerPort: {{ $V.ports.http }}
    protocol: TCP
{{- end }}
{{- if $V.ports.health }}
  - name: health
    containerPort: {{ $V.ports.health }}
    protocol: TCP
{{- end }}
{{- if $V.probes.startup.enabled }}
startupProbe:
{{- include "sidelog.probe" (dict "ctx" . "kind" "startup") | trim | nindent 2 }}
{{- end }}
{{- if $V.probes.liveness.enabled }}
livenessProbe:
{{- include "sidelog.probe" (dict "ctx" . "kind" "liveness") | trim | nindent 2 }}
{{- end }}
{{- if and $V.probes.readiness.enabled (or (eq .mode "cluster") $V.sidecar.readiness) }}
readinessProbe:
{{- include "sidelog.probe" (dict "ctx" . "kind" "readiness") | trim | nindent 2 }}
{{- end }}
resources:
{{- toYaml (ternary $V.resources $V.sidecar.resources (eq .mode "cluster")) | nindent 2 }}
securityContext:
{{- toYaml $V.containerSecurityContext | nindent 2 }}
volumeMounts:
  - name: {{ include "sidelog.dataVolumeName" . }}
    mountPath: /data
{{- if $V.tls.peer.enabled }}
  - name: sidelog-peer-tls
    mountPath: /tls/peer
    readOnly: true
{{- end }}
{{- if include "sidelog.clientTlsOn" . }}
  - name: sidelog-client-tls
    mountPath: /tls/client
    readOnly: true
{{- end }}
{{- if and $V.acl.enabled (include "sidelog.clientTlsOn" .) }}
  - name: sidelog-acl
    mountPath: /acl
    readOnly: true
{{- end }}
{{- end }}

{{- define "sidelog.dataVolumeName" -}}
{{- ternary "data" "sidelog-data" (eq .mode "cluster") -}}
{{- end }}

{{/*
Pod volumes for TLS and ACL (not the data volume). Args: the context.
*/}}
{{- define "sidelog.tlsVolumes" -}}
{{- $V := .V -}}
{{- if $V.tls.peer.enabled }}
- name: sidelog-peer-tls
  secret:
    secretName: {{ include "sidelog.peerTlsSecret" . }}
    defaultMode: 0440
{{- end }}
{{- if include "sidelog.clientTlsOn" . }}
- name: sidelog-client-tls
  secret:
    secretName: {{ include "sidelog.clientTlsSecret" . }}
    defaultMode: 0440
{{- end }}
{{- if and $V.acl.enabled (include "sidelog.clientTlsOn" .) }}
- name: sidelog-acl
{{- if $V.acl.existingSecret }}
  secret:
    secretName: {{ $V.acl.existingSecret }}
    defaultMode: 0440
{{- else }}
  configMap:
    name: {{ include "sidelog.aclName" . }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}
