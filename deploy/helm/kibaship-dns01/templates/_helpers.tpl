{{/*
Names. Every object is named from the fullname, so two releases never share an
object; with the release name kibaship-dns01 the names are the Kustomize ones.
*/}}
{{- define "kibaship-dns01.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kibaship-dns01.fullname" -}}
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

{{- define "kibaship-dns01.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: the pods of this release. They never carry the chart or app
version, so `helm upgrade` to a later chart never touches the Deployment's
immutable spec.selector.
*/}}
{{- define "kibaship-dns01.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kibaship-dns01.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{/*
Labels on every object (add app.kubernetes.io/component where the object has one).
*/}}
{{- define "kibaship-dns01.labels" -}}
helm.sh/chart: {{ include "kibaship-dns01.chart" . }}
app.kubernetes.io/name: {{ include "kibaship-dns01.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kibaship
{{- end }}

{{/*
The ServiceAccount subject of every binding that grants the daemon something.
*/}}
{{- define "kibaship-dns01.subject" -}}
- kind: ServiceAccount
  name: {{ include "kibaship-dns01.fullname" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/* The serving Secret: an existing one, or the one the chart's Certificate writes. */}}
{{- define "kibaship-dns01.servingSecret" -}}
{{- .Values.servingCertificate.existingSecret | default (printf "%s-webhook-tls" (include "kibaship-dns01.fullname" .)) }}
{{- end }}

{{- define "kibaship-dns01.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default (printf "v%s" .Chart.AppVersion)) }}
{{- end }}
{{- end }}

{{/*
The Valkey Service, Secret and port the daemon uses: the value, else the daemon's
own default (--valkey-service, --valkey-secret, --valkey-port in
kibaship_dns01/tap.py). The RBAC resourceNames and the NetworkPolicy need the
effective names; scripts/check-deploy fails when these stop matching the daemon.
*/}}
{{- define "kibaship-dns01.valkeySecret" -}}
{{- .Values.valkey.secretName | default "kibaship-valkey-cluster-kibaship-com" }}
{{- end }}

{{- define "kibaship-dns01.valkeyPort" -}}
{{- .Values.valkey.port | default 6379 }}
{{- end }}

{{/*
Delegated renewals. The container's DNS port is fixed (the Service maps
delegation.service.port to it); the secret is a file in a mounted Secret.
*/}}
{{- define "kibaship-dns01.dnsPort" -}}
5353
{{- end }}

{{- define "kibaship-dns01.delegationSecret" -}}
{{- .Values.delegation.secret.existingSecret | default (printf "%s-delegation" (include "kibaship-dns01.fullname" .)) }}
{{- end }}

{{- define "kibaship-dns01.delegationSecretDir" -}}
/etc/kibaship-dns01/delegation
{{- end }}

{{- define "kibaship-dns01.delegationSecretFile" -}}
{{- printf "%s/secret" (include "kibaship-dns01.delegationSecretDir" .) }}
{{- end }}

{{/*
The delegation settings as KIBASHIP_DNS01_* variables (lists comma-joined);
an empty list or null leaves the daemon's default.
*/}}
{{- define "kibaship-dns01.delegationEnv" -}}
{{- $d := .Values.delegation -}}
- name: KIBASHIP_DNS01_DELEGATION_ZONE
  value: {{ $d.zone | quote }}
{{- range $flag, $value := dict "NAMESERVERS" $d.nameservers "NAMESERVER_ADDRESSES" $d.nameserverAddresses "NAMESPACES" $d.namespaces }}
{{- if $value }}
- name: KIBASHIP_DNS01_DELEGATION_{{ $flag }}
  value: {{ join "," $value | quote }}
{{- end }}
{{- end }}
{{- with $d.resolvers }}
- name: KIBASHIP_DNS01_DNS_RESOLVERS
  value: {{ join "," . | quote }}
{{- end }}
{{- range $flag, $value := dict "RATE_LIMIT" $d.rateLimit "RATE_LIMIT_SLIP" $d.slip }}
{{- if not (kindIs "invalid" $value) }}
- name: KIBASHIP_DNS01_DNS_{{ $flag }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Daemon flags the chart sets from a value, and that value's name: extraArgs and
extraEnv may not set them a second time (a flag in args silently wins over its
KIBASHIP_DNS01_* variable, and a second --group-name would leave the APIService
and RBAC naming the first). values.schema.json already refuses an extraArgs
entry that is not --flag or --flag=value.
*/}}
{{- define "kibaship-dns01.managedFlags" -}}
secure-port: securePort
metrics-port: metricsPort
tls-cert-file: servingCertificate
tls-private-key-file: servingCertificate
group-name: groupName
solver-name: solverName
log-format: logFormat
log-level: logLevel
shutdown-delay: shutdown.delay
shutdown-grace-period: shutdown.gracePeriod
valkey-namespace: valkey.namespace
valkey-service: valkey.serviceName
valkey-secret: valkey.secretName
valkey-port: valkey.port
delegation-zone: delegation.zone
delegation-secret-file: delegation.secret
delegation-nameservers: delegation.nameservers
delegation-nameserver-addresses: delegation.nameserverAddresses
delegation-namespaces: delegation.namespaces
dns-port: delegation.service.port
dns-resolvers: delegation.resolvers
dns-rate-limit: delegation.rateLimit
dns-rate-limit-slip: delegation.slip
tls-min-version: tls.minVersion
tls-cipher-suites: tls.cipherSuites
{{- end }}

{{- define "kibaship-dns01.validate" -}}
{{- $managed := include "kibaship-dns01.managedFlags" . | fromYaml }}
{{- with .Values.delegation }}
{{- if and .enabled (not .secret.create) (not .secret.existingSecret) }}
{{- fail "delegation.secret: set existingSecret to the Secret that holds the delegation secret (key secret), or create: true to let the chart make it" }}
{{- end }}
{{- end }}
{{- range .Values.extraArgs }}
{{- $flag := regexReplaceAll "^--([^=]*).*$" . "${1}" }}
{{- if hasKey $managed $flag }}
{{- fail (printf "extraArgs: --%s is set by the chart; set the value %s instead" $flag (get $managed $flag)) }}
{{- end }}
{{- end }}
{{- range .Values.extraEnv }}
{{- $env := .name }}
{{- range $flag, $value := $managed }}
{{- if eq $env (printf "KIBASHIP_DNS01_%s" ($flag | replace "-" "_" | upper)) }}
{{- fail (printf "extraEnv: %s is set by the chart (--%s); set the value %s instead" $env $flag $value) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
