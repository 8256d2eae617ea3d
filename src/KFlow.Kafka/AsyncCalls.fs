// The async map calls of one partition loop: started with their stage's retries in place, their
// results queued until the loop resumes the pipe with them, oldest first. Loop thread only.
namespace KFlow.Kafka

open System.Collections.Generic
open System.Threading.Tasks
open KFlow

/// The async calls of one partition loop. `pending id task` is called for a call that runs on,
/// whose result comes back as CallDone and is handed to `Arrived`.
[<Sealed>]
type internal AsyncCalls
    (tp: KFlow.TopicPartition, handling: FailureHandling, pending: int -> Task<obj> -> unit) =
    let ready = Queue<struct (int * Result<obj, exn>)>()
    // The async nodes seen (their failures come after the retries in place).
    let stages = HashSet<string>()
    let mutable inFlight = 0

    /// Calls started whose result has not been taken yet.
    member _.InFlight = inFlight

    /// Whether a result waits to be taken.
    member _.HasReady = ready.Count > 0

    /// Whether `stage` is an async node seen by this loop.
    member _.IsStage(stage: string) = stages.Contains stage

    /// Starts a call; a result available at once is queued now.
    member _.Start(request: AsyncRequest) =
        inFlight <- inFlight + 1

        stages.Add request.Stage |> ignore
        let policy = FailureHandling.policyOf request.Stage handling

        let t =
            FailureHandling.retrying
                handling
                (fun () -> $"{tp}: async map '{request.Stage}' at offset {request.Envelope.Position.Offset}")
                policy
                (fun () -> request.Run request.Envelope.Value)

        if t.IsCompleted then
            ready.Enqueue(
                struct (request.Id,
                        (if t.IsCompletedSuccessfully then
                             Ok t.Result
                         else
                             Error(taskError t)))
            )
        else
            pending request.Id t

    /// Queues the result of a call that ran on.
    member _.Arrived(id: int, result: Result<obj, exn>) = ready.Enqueue(struct (id, result))

    /// Takes the oldest queued result (the call is no longer in flight).
    member _.Take() =
        let r = ready.Dequeue()
        inFlight <- inFlight - 1
        r

    /// Forgets every call (the assignment ended).
    member _.Clear() =
        ready.Clear()
        inFlight <- 0
