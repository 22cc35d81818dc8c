{{- define "app.fullname" -}}
{{- printf "%s-%s" .Release.Name "app" | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "app.labels" -}}
app.kubernetes.io/name: sidelog-example-app
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The writer container: produces to the sidecar on localhost. */}}
{{- define "app.writer" -}}
- name: writer
  image: {{ .Values.writer.image.repository }}:{{ .Values.writer.image.tag }}
  imagePullPolicy: {{ .Values.writer.image.pullPolicy }}
  command: ["/bin/sh", "-c"]
  args:
    - |
      i=0
      while :; do
        v=$(printf '%s %s' "$HOSTNAME" "$i" | base64)
        grpcurl -plaintext -max-time 5 -d "{\"record\":{\"value\":\"$v\"}}" \
          127.0.0.1:8400 log.v1.Log/Produce || echo "produce failed (cluster forming?)"
        i=$((i+1))
        sleep {{ .Values.writer.intervalSeconds }}
      done
  resources:
    requests:
      cpu: 10m
      memory: 16Mi
    limits:
      memory: 64Mi
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
    seccompProfile:
      type: RuntimeDefault
{{- end }}
