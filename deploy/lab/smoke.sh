# shellcheck shell=bash
# `lab smoke`: sourced by deploy/lab/lab (uses its helpers and tables). Fails fast: the first
# failing check is named, the objects created so far are removed, and the exit status is 1.

SMOKE_TMP=""
SMOKE_CLEANUP=() # "inst|dn" to delete at the end (reverse order)
SMOKE_N=0

smoke_fail() {
  local name=$1
  shift
  printf 'smoke: FAILED check "%s": %s\n' "$name" "$*" >&2
  [[ -s $SMOKE_TMP/out ]] && sed 's/^/    /' "$SMOKE_TMP/out" | tail -n 8 >&2
  exit 1
}
smoke_ok() {
  SMOKE_N=$((SMOKE_N + 1))
  say "ok   $*"
}

smoke_cleanup() {
  local i item inst dn
  for ((i = ${#SMOKE_CLEANUP[@]} - 1; i >= 0; i--)); do
    item=${SMOKE_CLEANUP[$i]}
    inst=${item%%|*}
    dn=${item#*|}
    ldapdelete -x -o nettimeout=5 -H "ldaps://${IP[$inst]}" -D "CN=Administrator,CN=Users,${BASE[${DOMOF[$inst]}]}" \
      -y "$(admin_pw_file)" "$dn" >/dev/null 2>&1 || true
  done
  [[ -n $SMOKE_TMP ]] && rm -rf "$SMOKE_TMP"
}

b64pw() { printf '"%s"' "$1" | iconv -f UTF-8 -t UTF-16LE | base64 -w0; }

# as_admin DOMAIN INST TOOL ARGS... / as_svc DOMAIN INST TOOL ARGS... ; output in $SMOKE_TMP/out; sets RC
as_admin() {
  local dom=$1 inst=$2 tool=$3
  shift 3
  RC=0
  "$tool" -x -o nettimeout=5 -H "ldaps://${IP[$inst]}" -D "CN=Administrator,CN=Users,${BASE[$dom]}" \
    -y "$(admin_pw_file)" "$@" >"$SMOKE_TMP/out" 2>&1 || RC=$?
}
as_svc() {
  local dom=$1 inst=$2 tool=$3
  shift 3
  RC=0
  "$tool" -x -o nettimeout=5 -H "ldaps://${IP[$inst]}" -D "CN=$SVC,CN=Users,${BASE[$dom]}" \
    -y "$(svc_pw_file "$dom")" "$@" >"$SMOKE_TMP/out" 2>&1 || RC=$?
}
expect_rc() { # name want
  [[ $RC == "$2" ]] || smoke_fail "$1" "expected LDAP result $2, got $RC"
}

# dirsync_as_svc DOMAIN INST FILTER [COOKIE]: DirSync as forestsync asks for it (flags 0x80000000
# INCREMENTAL_VALUES, base = domain root); output in $SMOKE_TMP/out, the returned cookie in $COOKIE
dirsync_as_svc() {
  local dom=$1 inst=$2 filter=$3 cookie=${4:-}
  as_svc "$dom" "$inst" ldapsearch -LLL -E "!dirSync=-2147483648/0${cookie:+/$cookie}" -b "${BASE[$dom]}" \
    "$filter" isDeleted sAMAccountName
  COOKIE=$(sed -n 's/^# cookie:: //p' "$SMOKE_TMP/out")
}
# has_tombstone SAM: $SMOKE_TMP/out holds SAM's tombstone (DN under CN=Deleted Objects, isDeleted TRUE)
has_tombstone() {
  # unwrap LDIF continuation lines first (long DNs are folded at 76 columns)
  sed -e ':a' -e 'N' -e '$!ba' -e 's/\n //g' "$SMOKE_TMP/out" |
    awk -v s="dn: CN=$1\\\\0ADEL:" 'index($0, s) == 1 && index($0, ",CN=Deleted Objects,") { d = 1 }
      d && /^isDeleted: TRUE$/ { f = 1 } /^$/ { d = 0 } END { exit !f }'
}

hook_logged() { # account verdict [dc]
  awk -v a=" account=$1 " -v v=" verdict=$2 " -v d="${3:+ dc=$3 }" \
    'index($0, a) && index($0, v) && (d == "" || index($0, d)) { f = 1 } END { exit !f }' "$LAB_DIR/cps.log"
}

cmd_smoke() {
  local t_start=$SECONDS inst dom sam pw dn udn gdn rc i n val
  SMOKE_TMP=$(mktemp -d /tmp/lab-smoke.XXXXXX)
  export LDAPTLS_CACERT LDAPTLS_REQCERT=demand
  LDAPTLS_CACERT=$(ca_file)
  unset LDAPTLS_CERT LDAPTLS_KEY LDAPRC LDAPCONF 2>/dev/null || true
  trap smoke_cleanup EXIT

  local capture=0
  [[ -x $LAB_DIR/hooks/capture-password && -f $LAB_DIR/hooks/capture-password ]] && capture=1

  # 1. LDAPS bind with CA verification, by IP, as the service account, on every DC
  for inst in "${INSTANCES[@]}"; do
    dom=${DOMOF[$inst]}
    as_svc "$dom" "$inst" ldapsearch -LLL -s base -b '' dnsHostName
    expect_rc "ldaps-bind $inst" 0
    grep -qi "dnsHostName: ${HOST[$inst]}.${DNSDOM[$dom]}" "$SMOKE_TMP/out" ||
      smoke_fail "ldaps-bind $inst" "rootDSE dnsHostName is not ${HOST[$inst]}.${DNSDOM[$dom]}"
  done
  smoke_ok "LDAPS bind (CA verified, by IP) as $SVC on ${INSTANCES[*]}"

  # 2. StartTLS on 389, verified
  for inst in "${INSTANCES[@]}"; do
    dom=${DOMOF[$inst]}
    RC=0
    ldapsearch -x -ZZ -o nettimeout=5 -H "ldap://${IP[$inst]}" -D "CN=$SVC,CN=Users,${BASE[$dom]}" \
      -y "$(svc_pw_file "$dom")" -LLL -s base -b '' dnsHostName >"$SMOKE_TMP/out" 2>&1 || RC=$?
    expect_rc "starttls $inst" 0
  done
  smoke_ok "StartTLS (-ZZ, verified) on port 389 of every DC"

  # 3. certificate names + lab DNS: LDAPS by host name inside the lab DNS namespace
  for inst in alpha-dc2 beta-dc1; do
    dom=${DOMOF[$inst]}
    RC=0
    in_ns "$(domain_resolv "$dom")" ldapsearch -x -o nettimeout=5 -H "ldaps://${HOST[$inst]}.${DNSDOM[$dom]}" \
      -D "$SVC@${REALM[$dom]}" -y "$(svc_pw_file "$dom")" -LLL -s base -b '' dnsHostName \
      >"$SMOKE_TMP/out" 2>&1 || RC=$?
    expect_rc "ldaps-by-name ${HOST[$inst]}.${DNSDOM[$dom]}" 0
  done
  smoke_ok "LDAPS by DNS name (lab DNS, name SANs, UPN bind) on DC2.alpha.test and DC1.beta.test"

  # 4. plain simple bind without TLS is refused (strong auth)
  RC=0
  ldapsearch -x -o nettimeout=5 -H "ldap://${IP[alpha-dc1]}" -D "CN=$SVC,CN=Users,${BASE[alpha]}" \
    -y "$(svc_pw_file alpha)" -LLL -s base -b '' dnsHostName >"$SMOKE_TMP/out" 2>&1 || RC=$?
  expect_rc "plain-bind-refused" 8
  smoke_ok "simple bind on 389 without TLS refused (strongAuthRequired, 8)"

  # 5. create a user with a password on ALPHA DC1; the hook accepted and logged it
  sam=smk$(printf '%04x%04x' $RANDOM $RANDOM)
  pw="Qz7-$(printf "%04x" $RANDOM)-Pw9"
  udn="CN=$sam,CN=Users,${BASE[alpha]}"
  as_admin alpha alpha-dc1 ldapadd <<EOF
dn: $udn
objectClass: user
sAMAccountName: $sam
userPrincipalName: $sam@alpha.test
displayName: Smoke Tester
unicodePwd:: $(b64pw "$pw")
userAccountControl: 512
EOF
  expect_rc "create-user-with-password alpha-dc1" 0
  SMOKE_CLEANUP+=("alpha-dc1|$udn")
  if ((capture)); then
    hook_logged "$sam" delegated alpha-dc1 || smoke_fail "hook-log" "no 'verdict=delegated' line for $sam in $LAB_DIR/cps.log"
    smoke_ok "user $sam created with a password on alpha-dc1; hook delegated to capture-password (logged)"
  else
    hook_logged "$sam" accept alpha-dc1 || smoke_fail "hook-log" "no 'verdict=accept' line for $sam in $LAB_DIR/cps.log"
    grep -qF -- "$pw" "$LAB_DIR/cps.log" && smoke_fail "hook-log" "the password appears in $LAB_DIR/cps.log"
    smoke_ok "user $sam created with a password on alpha-dc1; hook accepted and logged it (no password in log)"
  fi

  # 6. the hook's complexity rules reject weak passwords (only when capture-password is not installed)
  if ((capture)); then
    say "skip weak-password checks: $LAB_DIR/hooks/capture-password is installed and decides instead"
  else
    local weak
    for weak in aaaaaaaa1 "Xx1-${sam^^}" "Tester-9z"; do
      as_admin alpha alpha-dc1 ldapmodify <<EOF
dn: $udn
changetype: modify
replace: unicodePwd
unicodePwd:: $(b64pw "$weak")
-
EOF
      expect_rc "weak-password-rejected ($weak)" 19
    done
    [[ $(grep -F " account=$sam " "$LAB_DIR/cps.log" | grep -c 'verdict=reject') -ge 3 ]] ||
      smoke_fail "hook-log" "expected 3 'verdict=reject' lines for $sam in $LAB_DIR/cps.log"
    # the hook runs on BETA too: a weak password on add is refused there
    as_admin beta beta-dc1 ldapadd <<EOF
dn: CN=$sam,CN=Users,${BASE[beta]}
objectClass: user
sAMAccountName: $sam
unicodePwd:: $(b64pw aaaaaaaa1)
userAccountControl: 512
EOF
    expect_rc "weak-password-rejected beta-dc1" 19
    hook_logged "$sam" reject beta-dc1 || smoke_fail "hook-log beta-dc1" "no reject line for $sam from beta-dc1"
    smoke_ok "weak passwords (aaaaaaaa1, contains account name, contains full-name token) rejected with 19 on alpha-dc1 and beta-dc1; logged"
  fi

  # 7. replication DC1 -> DC2 (poll <= 30 s), and the new user can bind on DC2
  local t0=$SECONDS
  n=0
  while ((SECONDS - t0 <= 30)); do
    as_svc alpha alpha-dc2 ldapsearch -LLL -b "${BASE[alpha]}" "(sAMAccountName=$sam)" 1.1
    if [[ $RC == 0 ]] && grep -q "^dn: " "$SMOKE_TMP/out"; then
      n=1
      break
    fi
    sleep 1
  done
  ((n == 1)) || smoke_fail "replication alpha-dc1->alpha-dc2" "$sam not on alpha-dc2 after 30 s"
  local rep1=$((SECONDS - t0))
  RC=0
  ldapsearch -x -o nettimeout=5 -H "ldaps://${IP[alpha-dc2]}" -D "$sam@ALPHA.TEST" -w "$pw" -LLL -s base -b '' \
    dnsHostName >"$SMOKE_TMP/out" 2>&1 || RC=$?
  expect_rc "new-user-binds-on-alpha-dc2" 0
  smoke_ok "user replicated alpha-dc1 -> alpha-dc2 in ~${rep1}s and binds there with its password"

  # 8. modify on DC2 reaches DC1
  val="smoke-$RANDOM"
  as_admin alpha alpha-dc2 ldapmodify <<EOF
dn: $udn
changetype: modify
replace: description
description: $val
-
EOF
  expect_rc "modify-on-alpha-dc2" 0
  t0=$SECONDS
  n=0
  while ((SECONDS - t0 <= 30)); do
    as_svc alpha alpha-dc1 ldapsearch -LLL -b "$udn" -s base description
    if grep -q "^description: $val" "$SMOKE_TMP/out"; then
      n=1
      break
    fi
    sleep 1
  done
  ((n == 1)) || smoke_fail "replication alpha-dc2->alpha-dc1" "description change on alpha-dc2 not on alpha-dc1 after 30 s"
  smoke_ok "modify on alpha-dc2 reached alpha-dc1 in ~$((SECONDS - t0))s"

  # 9. the user does not exist in BETA
  as_svc beta beta-dc1 ldapsearch -LLL -b "${BASE[beta]}" "(sAMAccountName=$sam)" 1.1
  expect_rc "user-absent-in-beta" 0
  grep -q "^dn: " "$SMOKE_TMP/out" && smoke_fail "user-absent-in-beta" "$sam exists in BETA.TEST"
  smoke_ok "user does not exist in BETA.TEST"

  # 10. the service account is refused where it has no rights (insufficientAccessRights, 50)
  as_svc alpha alpha-dc1 ldapmodify <<EOF
dn: CN=Administrator,CN=Users,${BASE[alpha]}
changetype: modify
replace: description
description: smoke should not be able to write this
-
EOF
  expect_rc "svc-refused: modify Administrator description" 50
  as_svc alpha alpha-dc1 ldapadd <<EOF
dn: CN=${sam}x,CN=Users,${BASE[alpha]}
objectClass: user
sAMAccountName: ${sam}x
EOF
  [[ $RC == 0 ]] && SMOKE_CLEANUP+=("alpha-dc1|CN=${sam}x,CN=Users,${BASE[alpha]}")
  expect_rc "svc-refused: create user in CN=Users" 50
  as_svc alpha alpha-dc1 ldapmodify <<EOF
dn: CN=Domain Admins,CN=Users,${BASE[alpha]}
changetype: modify
add: member
member: CN=$SVC,CN=Users,${BASE[alpha]}
-
EOF
  expect_rc "svc-refused: add itself to Domain Admins" 50
  # Administrator is protected like Windows' AdminSDHolder would (inheritance blocked): the
  # domain-wide Reset Password right must not reach it. (Same password as now: harmless if allowed.)
  as_svc alpha alpha-dc1 ldapmodify <<EOF
dn: CN=Administrator,CN=Users,${BASE[alpha]}
changetype: modify
replace: unicodePwd
unicodePwd:: $(b64pw "$(secret admin)")
-
EOF
  expect_rc "svc-refused: reset the Administrator password" 50
  as_svc beta beta-dc1 ldapmodify <<EOF
dn: CN=Administrator,CN=Users,${BASE[beta]}
changetype: modify
replace: description
description: smoke should not be able to write this
-
EOF
  expect_rc "svc-refused: modify Administrator description (beta)" 50
  smoke_ok "$SVC gets insufficientAccessRights (50) outside its rights (Administrator description and password, user in CN=Users, Domain Admins member; alpha and beta)"

  # 11. ... and is allowed what it was granted
  local fdn="CN=${sam}f,OU=ForestSync,${BASE[alpha]}" gdn="CN=${sam}g,OU=ForestSync,${BASE[alpha]}"
  as_svc alpha alpha-dc1 ldapadd <<EOF
dn: $fdn
objectClass: user
sAMAccountName: ${sam}f
userPrincipalName: ${sam}f@alpha.test
unicodePwd:: $(b64pw "$pw-f")
userAccountControl: 512
EOF
  expect_rc "svc-allowed: create user with password in OU=ForestSync" 0
  SMOKE_CLEANUP+=("alpha-dc1|$fdn")
  as_svc alpha alpha-dc1 ldapadd <<EOF
dn: $gdn
objectClass: group
sAMAccountName: ${sam}g
groupType: -2147483646
member: $fdn
EOF
  expect_rc "svc-allowed: create group in OU=ForestSync" 0
  SMOKE_CLEANUP+=("alpha-dc1|$gdn")
  as_svc alpha alpha-dc1 ldapmodify <<EOF
dn: $fdn
changetype: modify
replace: description
description: written by $SVC
-
replace: givenName
givenName: Smoke
-

dn: CN=JumpCloud,OU=ADI,${BASE[alpha]}
changetype: modify
add: member
member: $gdn
-

dn: CN=JumpCloud,OU=ADI,${BASE[alpha]}
changetype: modify
delete: member
member: $gdn
-
EOF
  expect_rc "svc-allowed: write attributes in OU=ForestSync / member of the ADI root group" 0
  # domain-wide: reset password and write userAccountControl on a user outside its OUs (on DC2:
  # also proves the hook runs on the replica)
  as_svc alpha alpha-dc2 ldapmodify <<EOF
dn: $udn
changetype: modify
replace: unicodePwd
unicodePwd:: $(b64pw "$pw-2")
-
EOF
  expect_rc "svc-allowed: reset password (on alpha-dc2)" 0
  hook_logged "$sam" "$( ((capture)) && echo delegated || echo accept)" alpha-dc2 ||
    smoke_fail "hook-log alpha-dc2" "no line for $sam from alpha-dc2 in $LAB_DIR/cps.log"
  as_svc alpha alpha-dc2 ldapmodify <<EOF
dn: $udn
changetype: modify
replace: userAccountControl
userAccountControl: 514
-
EOF
  expect_rc "svc-allowed: disable via userAccountControl" 0
  as_svc alpha alpha-dc2 ldapmodify <<EOF
dn: $udn
changetype: modify
replace: userAccountControl
userAccountControl: 512
-
EOF
  expect_rc "svc-allowed: enable via userAccountControl" 0
  as_svc alpha alpha-dc1 ldapdelete "$gdn"
  expect_rc "svc-allowed: delete group in OU=ForestSync" 0
  as_svc alpha alpha-dc1 ldapdelete "$fdn"
  expect_rc "svc-allowed: delete user in OU=ForestSync" 0
  smoke_ok "$SVC may create/write/delete users and groups in OU=ForestSync, edit the root group, reset passwords and write userAccountControl (hook logged the reset on alpha-dc2)"

  # 12. DirSync as the service account
  for dom in alpha beta; do
    as_svc "$dom" "${dom}-dc1" ldapsearch -LLL -E '!dirSync=0/0' -b "${BASE[$dom]}" \
      '(objectClass=user)' sAMAccountName
    expect_rc "dirsync $dom" 0
    n=$(grep -c '^dn: ' "$SMOKE_TMP/out" || true)
    ((n > 0)) || smoke_fail "dirsync $dom" "DirSync as $SVC returned no entries"
    grep -q "^dn: CN=$SVC," "$SMOKE_TMP/out" || smoke_fail "dirsync $dom" "DirSync result lacks $SVC itself"
  done
  smoke_ok "DirSync (1.2.840.113556.1.4.841) as $SVC returns the directory on alpha and beta"

  # 13. DirSync as the service account returns tombstones (needs its read grant on CN=Deleted Objects:
  # Samba, unlike Windows, checks that container even for a holder of Replicating Directory Changes).
  # Cookie taken first; a user created and deleted after it in OU=ADI must come back as a tombstone
  # from the incremental read, on ALPHA DC1, on ALPHA DC2 (replicated delete) and on BETA DC1. The
  # filter is forestsync's, narrowed to the test account so the cookie is cheap on a well-used lab.
  local c1 c2 cb fil t0
  sam=smkdel$(printf '%04x%04x' $RANDOM $RANDOM)
  fil="(&(sAMAccountName=$sam)(|(&(objectClass=user)(!(objectClass=computer)))(objectClass=group)))"
  dirsync_as_svc alpha alpha-dc1 "$fil"
  expect_rc "dirsync-deleted: cookie alpha-dc1" 0
  c1=$COOKIE
  dirsync_as_svc alpha alpha-dc2 "$fil"
  expect_rc "dirsync-deleted: cookie alpha-dc2" 0
  c2=$COOKIE
  dirsync_as_svc beta beta-dc1 "$fil"
  expect_rc "dirsync-deleted: cookie beta-dc1" 0
  cb=$COOKIE
  [[ -n $c1 && -n $c2 && -n $cb ]] || smoke_fail "dirsync-deleted: cookie" "DirSync returned no cookie"
  for dom in alpha beta; do
    inst=${dom}-dc1
    dn="CN=$sam,OU=ADI,${BASE[$dom]}"
    as_admin "$dom" "$inst" ldapadd <<EOF
dn: $dn
objectClass: user
sAMAccountName: $sam
EOF
    expect_rc "dirsync-deleted: create $sam on $inst" 0
    SMOKE_CLEANUP+=("$inst|$dn")
    as_admin "$dom" "$inst" ldapdelete "$dn"
    expect_rc "dirsync-deleted: delete $sam on $inst" 0
    unset 'SMOKE_CLEANUP[-1]'
  done
  dirsync_as_svc alpha alpha-dc1 "$fil" "$c1"
  expect_rc "dirsync-deleted alpha-dc1" 0
  has_tombstone "$sam" || smoke_fail "dirsync-deleted alpha-dc1" "incremental DirSync as $SVC lacks the tombstone of $sam (grant on CN=Deleted Objects missing? run: lab grant-deleted-objects)"
  dirsync_as_svc beta beta-dc1 "$fil" "$cb"
  expect_rc "dirsync-deleted beta-dc1" 0
  has_tombstone "$sam" || smoke_fail "dirsync-deleted beta-dc1" "incremental DirSync as $SVC lacks the tombstone of $sam (grant on CN=Deleted Objects missing? run: lab grant-deleted-objects)"
  t0=$SECONDS
  until dirsync_as_svc alpha alpha-dc2 "$fil" "$c2" && [[ $RC == 0 ]] && has_tombstone "$sam"; do
    ((SECONDS - t0 < 30)) || smoke_fail "dirsync-deleted alpha-dc2" "no tombstone of $sam from incremental DirSync as $SVC on alpha-dc2 within 30 s"
    sleep 1
  done
  smoke_ok "$SVC sees deletions through DirSync: tombstone of a user deleted after the cookie on alpha-dc1, alpha-dc2 (replicated, ~$((SECONDS - t0))s) and beta-dc1"

  smoke_cleanup
  SMOKE_CLEANUP=()
  SMOKE_TMP=""
  trap - EXIT
  say "smoke: all $SMOKE_N checks passed in $((SECONDS - t_start)) s"
}
