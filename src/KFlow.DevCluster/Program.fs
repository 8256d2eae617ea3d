// Placeholder: the dev cluster program.
module KFlow.DevCluster.Program

[<EntryPoint>]
let main _ = 0
