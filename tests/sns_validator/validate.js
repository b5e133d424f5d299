// Validates one SNS message (JSON on stdin) with AWS's sns-validator, trusting
// certificates only from the host:port given as the first argument (the validator's
// default trusts sns.<region>.amazonaws.com alone). Prints "valid" or the validator's
// error; exits 0 or 1. The https fetch of SigningCertURL trusts NODE_EXTRA_CA_CERTS.
const MessageValidator = require('sns-validator');

const host = process.argv[2];
const escaped = host.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const validator = new MessageValidator(new RegExp(`^${escaped}$`));
let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  validator.validate(input, (error) => {
    console.log(error ? error.message : 'valid');
    process.exitCode = error ? 1 : 0;
  });
});
