// The checks a workflow runs against the cluster before its first consumer joins: the bootstrap
// servers answer and every topic exists, so a wrong setting fails at start with its name.
namespace KFlow.Kafka

open System
open Confluent.Kafka

/// A setting that the cluster shows to be wrong at start (unreachable servers, unknown topic).
type WorkflowStartException internal (setting: string, message: string, inner: exn) =
    inherit Exception(message, inner)
    /// The setting at fault, e.g. "BootstrapServers" or "Topics".
    member _.Setting = setting

/// The start checks.
[<RequireQualifiedAccess>]
module internal Preflight =
    /// Asks the cluster for its metadata (within StartTimeout) and checks every topic is known;
    /// raises WorkflowStartException naming the setting at fault.
    let check (options: WorkflowOptions) =
        let config = AdminClientConfig()

        for key, value in options.Properties do
            config.Set(key, value)

        config.BootstrapServers <- options.BootstrapServers
        config.ClientId <- $"{options.Name}-preflight"

        use admin =
            AdminClientBuilder(config)
                .SetLogHandler(fun _ _ -> ()) // unreachable brokers log many lines; the error says it
                .Build()

        let metadata =
            try
                admin.GetMetadata(options.StartTimeout)
            with :? KafkaException as e ->
                raise (
                    WorkflowStartException(
                        "BootstrapServers",
                        $"Workflow '{options.Name}': no broker of WorkflowOptions.BootstrapServers '{options.BootstrapServers}' answered within WorkflowOptions.StartTimeout ({options.StartTimeout}): {e.Error.Reason}. Check the address and that Kafka runs.",
                        e
                    )
                )

        let known =
            metadata.Topics
            |> Seq.filter (fun t -> not t.Error.IsError)
            |> Seq.map _.Topic
            |> Set.ofSeq

        match options.Topics |> List.filter (fun t -> not (known.Contains t)) with
        | [] -> ()
        | missing ->
            let names = missing |> List.map (sprintf "'%s'") |> String.concat ", "

            raise (
                WorkflowStartException(
                    "Topics",
                    $"Workflow '{options.Name}': WorkflowOptions.Topics names topics the cluster does not know: {names}. Create them or correct the names.",
                    null
                )
            )
