#!/usr/bin/env bash
# Credentials for a secured deployment: a private CA, a SuperLink TLS certificate
# signed by it, and one key pair per SuperNode for SuperNode authentication.
#
#   docker/generate-credentials.sh [OUT_DIR] [NUM_SUPERNODES] [EXTRA_SAN...]
#
# OUT_DIR defaults to docker/certs (git-ignored); NUM_SUPERNODES to 3. The
# server certificate covers localhost, 127.0.0.1, ::1 and the compose service
# name `superlink`; add the host name or IP address the SuperNodes and the
# flwr CLI use to reach the SuperLink as EXTRA_SAN (e.g. DNS:link.example.org
# or IP:10.0.0.5), since TLS checks the address against these names.
#
# Writes:
#   ca.crt, ca.key                      the CA (ca.crt goes to every SuperNode and CLI)
#   server.pem, server.key              the SuperLink's certificate and key
#   supernode-<i>, supernode-<i>.pub    SuperNode i's ECDSA P-384 key pair (OpenSSH
#                                       format, as flower-supernode and flwr supernode
#                                       register read them)
# Existing files are kept, so running it again only adds what is missing.
set -euo pipefail

out="${1:-$(dirname "$0")/certs}"
nodes="${2:-3}"
shift $(( $# > 2 ? 2 : $# ))
days=3650

for tool in openssl ssh-keygen; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is required (Debian/Ubuntu: apt-get install openssl openssh-client)" >&2
    exit 1
  fi
done
if ! [[ "$nodes" =~ ^[0-9]+$ ]]; then
  echo "error: NUM_SUPERNODES must be a non-negative integer, got '$nodes'" >&2
  exit 1
fi

mkdir -p "$out"
cd "$out"

if [[ ! -f ca.crt ]]; then
  openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days "$days" \
    -keyout ca.key -out ca.crt -subj "/CN=fedrouter deployment CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

if [[ ! -f server.pem ]]; then
  san="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:superlink"
  for extra in "$@"; do
    san="$san,$extra"
  done
  openssl req -newkey rsa:3072 -nodes -sha256 -keyout server.key -out server.csr \
    -subj "/CN=superlink" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$san" >server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
    -extfile server.ext -out server.pem 2>/dev/null
  rm -f server.csr server.ext ca.srl
  openssl verify -CAfile ca.crt server.pem >/dev/null
fi

for ((i = 0; i < nodes; i++)); do
  if [[ ! -f "supernode-$i" ]]; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" -f "supernode-$i"
  fi
done

# Keys are secrets: readable by their owner only (containers run as uid 49999:
# chown the directory to it, or mount with matching ownership).
chmod 600 ./*.key supernode-* 2>/dev/null || true
chmod 644 ca.crt server.pem ./*.pub 2>/dev/null || true
echo "credentials in $(pwd)"
