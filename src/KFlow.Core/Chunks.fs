// Objects split across several messages: wait for every chunk of an object, emit it once with the
// tokens of all its chunks.
namespace KFlow

type Chunk<'p> = {
    Id: string
    Index: int
    Count: int
    Part: 'p
}

/// An incomplete object: its parts by index, and its chunks' envelopes (newest first).
[<NoComparison>]
type internal Partial = {
    Count: int
    Parts: Map<int, obj>
    Held: Envelope<unit> list
}

[<RequireQualifiedAccess>]
module Chunks =
    let assemble (chunkOf: 'a -> Chunk<'p>) (combine: 'p list -> 'b) : Stage<'a, 'b> =
        let step _ event (partials: Map<string, Partial>) =
            match event with
            | Message e ->
                let chunk = chunkOf e.Value

                if chunk.Count < 1 || chunk.Index < 0 || chunk.Index >= chunk.Count then
                    invalidArgWith
                        "chunkOf"
                        (sprintf
                            "Chunk %d of %d of object %s at %O is out of range."
                            chunk.Index
                            chunk.Count
                            chunk.Id
                            e.Position)

                let partial =
                    partials
                    |> Map.tryFind chunk.Id
                    |> Option.defaultValue {
                        Count = chunk.Count
                        Parts = Map.empty
                        Held = []
                    }

                if partial.Parts.ContainsKey chunk.Index || chunk.Index >= partial.Count then
                    partials, Output.drop e
                else
                    let partial' = {
                        partial with
                            Parts = Map.add chunk.Index (box chunk.Part) partial.Parts
                            Held = Envelope.withValue () e :: partial.Held
                    }

                    if partial'.Parts.Count = partial'.Count then
                        let value = partial'.Parts |> Map.toList |> List.map (snd >> unbox<'p>) |> combine

                        Map.remove chunk.Id partials,
                        Output.emit (Envelope.merge value (List.rev partial'.Held))
                    else
                        Map.add chunk.Id partial' partials, Output.none
            | Flush -> Map.empty, Output.none
            | Revoked tp ->
                let holds (p: Partial) =
                    p.Held
                    |> List.exists (fun e ->
                        e.Tokens |> List.exists (fun t -> t.Position.TopicPartition = tp))

                partials |> Map.filter (fun _ p -> not (holds p)), Output.none
            | Tick
            | Assigned _ -> partials, Output.none

        Stage.create "assembleChunks" Map.empty step

    let pending (instance: StageInstance<'a, 'b>) =
        match instance.State with
        | :? Map<string, Partial> as partials -> partials.Count
        | _ -> 0
