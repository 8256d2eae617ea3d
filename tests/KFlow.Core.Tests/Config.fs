// The one FsCheck configuration of the core's properties: the shared generators and test count.
module KFlow.Core.Tests.Config

open Expecto

/// Properties run 300 cases (Expecto's default is 100) with the generators of Arbitraries.
let fsCheck = {
    FsCheckConfig.defaultConfig with
        maxTest = 300
        arbitrary = [ typeof<Arbitraries> ]
}
