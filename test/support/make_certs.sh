#!/usr/bin/env bash
# Makes the TLS test material in DIR with the openssl CLI (ECDSA P-256, as a deployment would):
#   ca.pem, ca2.pem               two unrelated CAs
#   server.{pem,key}              CN=localhost; SAN localhost, 127.0.0.1, ::1; from ca
#   server2.{pem,key}             the same names, CN=localhost reloaded (SIGHUP tests)
#   wrongname.{pem,key}           SAN wrong.example only; from ca
#   expired.{pem,key}             the right names, expired yesterday; from ca
#   untrusted.{pem,key}           the right names, from ca2
#   client.{pem,key}              CN=client1,O=aiorpc tests; clientAuth; from ca
#   client2.{pem,key}             CN=intruder; from ca2
#   broken.pem                    not a certificate
# Idempotent: does nothing when DIR/done exists.
set -euo pipefail
dir=$1
[ -f "$dir/done" ] && exit 0
mkdir -p "$dir"
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }
ca() {
  key "$1"
  openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 30 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
# leaf NAME CA SUBJECT DAYS EXTENSIONS
leaf() {
  key "$1"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "$3"
  printf '%s\n' "$5" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days "$4" \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
names="subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
srv="extendedKeyUsage=serverAuth"
ca ca "aiorpc test CA"
ca ca2 "another CA"
leaf server ca "/CN=localhost" 30 "$names
$srv"
leaf server2 ca "/CN=localhost reloaded" 30 "$names
$srv"
leaf wrongname ca "/CN=wrong.example" 30 "subjectAltName=DNS:wrong.example
$srv"
leaf expired ca "/CN=localhost" -1 "$names
$srv"
leaf untrusted ca2 "/CN=localhost" 30 "$names
$srv"
leaf client ca "/O=aiorpc tests/CN=client1" 30 "extendedKeyUsage=clientAuth,serverAuth
$names"
leaf client2 ca2 "/CN=intruder" 30 "extendedKeyUsage=clientAuth"
echo "not a certificate" >broken.pem
touch done
